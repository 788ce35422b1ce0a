//! CPU cost of the two pure steps of a poll cycle:
//!
//! - `decode`: one full answer of 125 holding registers (the wire limit of a read) into
//!   readings, as the adapter takes it: each point's registers sliced out, decoded
//!   (byte order, scale, offset) and made a `Reading` with its unit and time. Two maps: a
//!   mixed one (74 points of every register type) and 125 `u16` points (one per
//!   register, the most per-point overhead a block can have).
//! - `plan`: the read planner on a 1,000-point map over three tables, as a cycle that
//!   reads every point calls it.
//!
//! `cargo bench -p sensorgate-modbus`; the figures are in README.md ("Figures").

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sensorgate_api::{DeviceSpec, Reading};
use sensorgate_modbus::adapter::decode_point;
use sensorgate_modbus::config::Point;
use sensorgate_modbus::plan::ReadRequest;
use sensorgate_modbus::value::{encode, DataType};
use sensorgate_modbus::{ModbusAdapter, ModbusConfig};
use serde_json::json;

/// A device at a loopback address (never connected to here) with `points` (TOML
/// `[[point]]` tables).
fn adapter(points: &str) -> ModbusAdapter {
    let text = format!("transport = \"tcp\"\naddress = \"127.0.0.1:502\"\n{points}");
    let spec = DeviceSpec {
        name: "bench".into(),
        plugin: "modbus".into(),
        poll_interval: Duration::from_secs(1),
        state_dir: std::env::temp_dir(),
        table: toml::from_str(&text).expect("bench TOML parses"),
    };
    let config = match ModbusConfig::from_spec(&spec) {
        Ok(c) => c,
        Err(e) => panic!("bench device does not build: {e:?}"),
    };
    ModbusAdapter::new(&spec, config)
}

fn point(name: &str, address: u32, extra: &str) -> String {
    format!("[[point]]\nname = \"{name}\"\naddress = {address}\n{extra}\n")
}

/// 74 points filling holding registers 0..=124 exactly: 20 f32, 10 u32 CDAB, 5 f64,
/// 20 i16 with scale 0.1, 15 u16, a 8-register string, 2 bits of one register, 1 u16.
fn mixed_block() -> String {
    let mut s = String::new();
    let mut a = 0;
    let mut add = |n: usize, regs: u32, extra: &str, tag: &str| {
        for i in 0..n {
            s.push_str(&point(&format!("{tag}{i}"), a, extra));
            a += regs;
        }
    };
    add(20, 2, "type = \"f32\"\nunit = \"°C\"", "f");
    add(10, 2, "type = \"u32\"\nbyte_order = \"CDAB\"", "u");
    add(5, 4, "type = \"f64\"", "d");
    add(20, 1, "type = \"i16\"\nscale = 0.1\nunit = \"°C\"", "t");
    add(15, 1, "", "w");
    add(1, 8, "type = \"string\"\nlength = 8", "s");
    s.push_str(&point("bit0", 123, "bit = 0"));
    s.push_str(&point("bit5", 123, "bit = 5"));
    s.push_str(&point("last", 124, ""));
    s
}

fn u16_block() -> String {
    (0..125).map(|i| point(&format!("r{i}"), i, "")).collect()
}

/// The single read that covers the whole device, and registers that hold a plausible
/// value for every point of it.
fn block(a: &ModbusAdapter) -> (ReadRequest, Vec<u16>) {
    let points = &a.config().points;
    let all: Vec<usize> = (0..points.len()).collect();
    let plan = a.plan(&all);
    assert_eq!(plan.len(), 1, "one read: {plan:#?}");
    let req = plan.into_iter().next().expect("one read");
    assert_eq!(
        (req.address, req.count),
        (0, 125),
        "a full 125-register read"
    );
    let mut words = vec![0u16; 125];
    for (i, p) in points.iter().enumerate() {
        let start = usize::from(p.address);
        if p.format.bit.is_some() {
            words[start] |= 1 << p.format.bit.unwrap_or(0);
            continue;
        }
        let value = match p.format.ty {
            DataType::String => json!("pump-7 main"),
            DataType::F32 | DataType::F64 | DataType::I16 => json!(21.5 + i as f64),
            _ => json!(1000 + i),
        };
        let w = encode(&p.format, &value).expect("bench value encodes");
        words[start..start + w.len()].copy_from_slice(&w);
    }
    (req, words)
}

/// What `ModbusAdapter::take` does with an answer, minus the logging of problems.
fn take(device: &Arc<str>, points: &[Point], req: &ReadRequest, words: &[u16]) -> Vec<Reading> {
    let ts = SystemTime::now();
    let mut out = Vec::with_capacity(req.points.len());
    for &i in &req.points {
        let p = &points[i];
        if let Ok(v) = decode_point(p, req.address, words, &[]) {
            if v.is_publishable() {
                out.push(
                    Reading::new(device.clone(), p.name.clone(), v)
                        .with_unit(p.unit.clone())
                        .with_ts(ts),
                );
            }
        }
    }
    out
}

fn bench_decode(c: &mut Criterion) {
    let device: Arc<str> = Arc::from("bench");
    let mut g = c.benchmark_group("decode");
    // Throughput in registers: criterion prints registers/s as "elem/s".
    g.throughput(Throughput::Elements(125));
    for (name, points) in [
        ("125_registers_74_mixed_points", mixed_block()),
        ("125_registers_125_u16_points", u16_block()),
    ] {
        let a = adapter(&points);
        let (req, words) = block(&a);
        let pts = &a.config().points;
        let n = take(&device, pts, &req, &words).len();
        assert_eq!(n, pts.len(), "every point decodes");
        g.bench_function(name, |b| {
            b.iter(|| take(&device, pts, black_box(&req), black_box(&words)))
        });
    }
    g.finish();
}

/// 1,000 points, listed in a scrambled order (the planner sorts): 400 f32 holding in 10
/// blocks of 40 (gaps of 30 registers between blocks), 300 u16 input registers every
/// 3rd register, 200 contiguous i16 holding at 5000, 100 coils every 2nd bit.
fn thousand_points() -> String {
    let mut points = Vec::with_capacity(1000);
    for i in 0..400u32 {
        points.push(point(
            &format!("f{i}"),
            2 * i + (i / 40) * 30,
            "type = \"f32\"",
        ));
    }
    for i in 0..300u32 {
        points.push(point(&format!("in{i}"), 3 * i, "table = \"input\""));
    }
    for i in 0..200u32 {
        points.push(point(&format!("h{i}"), 5000 + i, "type = \"i16\""));
    }
    for i in 0..100u32 {
        points.push(point(&format!("c{i}"), 2 * i, "table = \"coil\""));
    }
    // A fixed permutation: 1000 and 379 are coprime.
    (0..1000)
        .map(|k| points[(k * 379) % 1000].clone())
        .collect()
}

fn bench_plan(c: &mut Criterion) {
    let a = adapter(&thousand_points());
    let all: Vec<usize> = (0..a.config().points.len()).collect();
    assert_eq!(all.len(), 1000);
    let plan = a.plan(&all);
    // 10 holding f32 blocks, 8 input reads (900 registers, 125 at most), 2 i16 reads
    // (200 registers), 1 coil read.
    assert_eq!(plan.len(), 21, "{plan:#?}");
    let mut g = c.benchmark_group("plan");
    g.throughput(Throughput::Elements(1000));
    g.bench_function("1000_points_21_requests", |b| {
        b.iter(|| a.plan(black_box(&all)))
    });
    g.finish();
}

criterion_group!(benches, bench_decode, bench_plan);
criterion_main!(benches);
