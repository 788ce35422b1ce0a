//! CPU cost of the two pure steps of a poll cycle:
//!
//! - `decode`: one full answer of 125 holding registers (the wire limit of a read) into
//!   readings, as the adapter takes it: each point's registers sliced out, decoded
//!   (byte order, scale, offset) and made a `Reading` with its unit and time. Two maps: a
//!   mixed one (74 points of every register type) and 125 `u16` points (one per
//!   register, the most per-point overhead a block can have).
//! - `plan`: the read planner on a 1,000-point map over three tables, as a cycle that
//!   reads every point calls it.
//! - `publish_1000_registers`: the CPU per 1 000 registers decoded and published: 8 full
//!   answers of 125 registers taken into readings, and each reading made the MQTT
//!   message the daemon publishes (its topic, and the JSON payload of `payload()` in the
//!   daemon's `src/publish.rs`, done here with serde_json the same way so that the bench
//!   does not depend on the daemon crate). Against, in the same run, the decode alone
//!   (values only) and the decode with readings but no message. Two maps over the same
//!   1 000 registers: 1 000 `u16` points, and 8 × the mixed block (592 points). Measured
//!   in CPU time of the bench's thread (`CLOCK_THREAD_CPUTIME_ID`, on 64-bit Linux; wall
//!   time elsewhere), so that other work on a shared machine weighs less.
//!
//! `cargo bench -p sensorgate-modbus`; the figures are in README.md ("Figures").

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use criterion::measurement::{Measurement, ValueFormatter};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sensorgate_api::{format_ts, DeviceSpec, Quality, Reading, Value};
use sensorgate_modbus::adapter::decode_point;
use sensorgate_modbus::config::Point;
use sensorgate_modbus::plan::ReadRequest;
use sensorgate_modbus::value::{encode, to_bytes, DataType, Format};
use sensorgate_modbus::{ModbusAdapter, ModbusConfig};
use serde::Serialize;
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

/// The reads that cover the whole device, each with registers that hold a plausible
/// value for every point of it.
fn blocks(a: &ModbusAdapter) -> Vec<(ReadRequest, Vec<u16>)> {
    let points = &a.config().points;
    let all: Vec<usize> = (0..points.len()).collect();
    a.plan(&all)
        .into_iter()
        .map(|req| {
            let mut words = vec![0u16; usize::from(req.count)];
            for &i in &req.points {
                let p = &points[i];
                let start = usize::from(p.address - req.address);
                if let Some(bit) = p.format.bit {
                    words[start] |= 1 << bit;
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
        })
        .collect()
}

/// The single read that covers the whole device (a full 125-register read).
fn block(a: &ModbusAdapter) -> (ReadRequest, Vec<u16>) {
    let mut all = blocks(a);
    assert_eq!(all.len(), 1, "one read: {all:#?}");
    let (req, words) = all.remove(0);
    assert_eq!(
        (req.address, req.count),
        (0, 125),
        "a full 125-register read"
    );
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
                out.push(Reading {
                    device: device.clone(),
                    point: p.name.clone(),
                    value: v,
                    unit: p.unit.clone(),
                    ts,
                    quality: Quality::Good,
                });
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

/// The payload of a reading as the daemon's `src/publish.rs` `payload()` makes it.
#[derive(Serialize)]
struct Payload<'a> {
    value: &'a Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    unit: Option<&'a str>,
    ts: String,
}

/// The MQTT message of a reading: `<prefix>/<device>/<point>` and its JSON payload.
fn message(prefix: &str, r: &Reading) -> (String, Vec<u8>) {
    let topic = format!("{prefix}/{}/{}", r.device, r.point);
    let p = Payload {
        value: &r.value,
        unit: r.unit.as_deref(),
        ts: format_ts(r.ts),
    };
    (topic, serde_json::to_vec(&p).unwrap_or_default())
}

/// The values of one answer, no readings (the peer: the decode alone).
fn values(points: &[Point], req: &ReadRequest, words: &[u16]) -> usize {
    req.points
        .iter()
        .filter_map(|&i| decode_point(&points[i], req.address, words, &[]).ok())
        .map(black_box)
        .count()
}

/// The decode as it was before it kept its bytes on the stack (session 1): the bytes of
/// every point in a `Vec`, an f32's shortest form and the decimals of scale and offset
/// through `String`s. The same results as `value::decode` on these maps (checked below;
/// 64-bit integers go through an f64 here, none are in the maps); kept here only
/// as the peer of the decode in the same run.
fn naive_decode(f: &Format, words: &[u16]) -> Option<Value> {
    fn arr<const N: usize>(b: &[u8]) -> [u8; N] {
        let mut a = [0u8; N];
        a.copy_from_slice(&b[..N]);
        a
    }
    fn decimals(x: f64) -> Option<u32> {
        let s = x.to_string();
        let d = s.split_once('.').map_or(0, |(_, frac)| frac.len() as u32);
        (d <= 15).then_some(d)
    }
    let bytes = to_bytes(words, f.order);
    if let Some(bit) = f.bit {
        let w = u16::from_be_bytes([bytes[0], bytes[1]]);
        return Some(Value::Bool(w >> bit & 1 == 1));
    }
    let (int, x) = match f.ty {
        DataType::Bool => return Some(Value::Bool(words[0] != 0)),
        DataType::String => {
            let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
            let text = String::from_utf8_lossy(&bytes[..end]);
            return Some(Value::Text(text.trim_end().to_string()));
        }
        DataType::U16 => (true, u16::from_be_bytes(arr(&bytes)) as f64),
        DataType::I16 => (true, i16::from_be_bytes(arr(&bytes)) as f64),
        DataType::U32 => (true, u32::from_be_bytes(arr(&bytes)) as f64),
        DataType::I32 => (true, i32::from_be_bytes(arr(&bytes)) as f64),
        DataType::U64 => (true, u64::from_be_bytes(arr(&bytes)) as f64),
        DataType::I64 => (true, i64::from_be_bytes(arr(&bytes)) as f64),
        DataType::F32 => {
            let v = f32::from_be_bytes(arr(&bytes));
            (false, v.to_string().parse::<f64>().unwrap_or(v as f64))
        }
        DataType::F64 => (false, f64::from_be_bytes(arr(&bytes))),
    };
    let scaled = f.scale.is_some_and(|s| s != 1.0) || f.offset.is_some_and(|o| o != 0.0);
    if !scaled {
        return Some(if int {
            Value::Int(x as i64)
        } else {
            Value::Float(x)
        });
    }
    let (scale, offset) = (f.scale.unwrap_or(1.0), f.offset.unwrap_or(0.0));
    let y = x * scale + offset;
    let y = match (int, decimals(scale), decimals(offset)) {
        (true, Some(a), Some(b)) => {
            let p = 10f64.powi(a.max(b) as i32);
            (y * p).round() / p
        }
        _ => y,
    };
    Some(Value::Float(y + 0.0))
}

/// [`values`] through [`naive_decode`].
fn naive_values(points: &[Point], req: &ReadRequest, words: &[u16]) -> usize {
    req.points
        .iter()
        .filter_map(|&i| {
            let p = &points[i];
            let off = usize::from(p.address - req.address);
            naive_decode(&p.format, &words[off..off + usize::from(p.count())])
        })
        .map(black_box)
        .count()
}

/// Registers 0..1000 in 8 reads of 125: 1 000 `u16` points, or 8 mixed blocks.
fn thousand_registers() -> [(&'static str, String); 2] {
    let mixed: String = (0..8u32)
        .flat_map(|b| {
            mixed_block()
                .lines()
                .map(|l| match l.strip_prefix("address = ") {
                    Some(a) => format!("address = {}", a.parse::<u32>().unwrap_or(0) + b * 125),
                    None => match l.strip_prefix("name = \"") {
                        Some(n) => format!("name = \"b{b}{n}"),
                        None => l.to_string(),
                    },
                })
                .map(|l| l + "\n")
                .collect::<Vec<_>>()
        })
        .collect();
    let u16s = (0..1000).map(|i| point(&format!("r{i}"), i, "")).collect();
    [("1000_u16_points", u16s), ("592_mixed_points", mixed)]
}

/// CPU time of the calling thread, in ns: criterion runs each routine on its own thread.
#[cfg(all(target_os = "linux", target_pointer_width = "64"))]
fn thread_cpu_ns() -> u64 {
    #[repr(C)]
    struct Timespec {
        sec: i64,
        nsec: i64,
    }
    extern "C" {
        fn clock_gettime(clock: i32, ts: *mut Timespec) -> i32;
    }
    const CLOCK_THREAD_CPUTIME_ID: i32 = 3;
    let mut ts = Timespec { sec: 0, nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec (64-bit Linux layout) for the call.
    let rc = unsafe { clock_gettime(CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    ts.sec as u64 * 1_000_000_000 + ts.nsec as u64
}

#[cfg(not(all(target_os = "linux", target_pointer_width = "64")))]
fn thread_cpu_ns() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_nanos() as u64
}

/// Criterion measuring the thread's CPU time instead of the wall clock.
struct ThreadCpu;

impl Measurement for ThreadCpu {
    type Intermediate = u64;
    type Value = u64;
    fn start(&self) -> u64 {
        thread_cpu_ns()
    }
    fn end(&self, start: u64) -> u64 {
        thread_cpu_ns().saturating_sub(start)
    }
    fn add(&self, a: &u64, b: &u64) -> u64 {
        a + b
    }
    fn zero(&self) -> u64 {
        0
    }
    fn to_f64(&self, v: &u64) -> f64 {
        *v as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        self
    }
}

/// Values in µs of CPU, throughput in M registers per CPU second.
impl ValueFormatter for ThreadCpu {
    fn scale_values(&self, _typical: f64, values: &mut [f64]) -> &'static str {
        values.iter_mut().for_each(|v| *v /= 1e3);
        "µs cpu"
    }
    fn scale_throughputs(&self, _typical: f64, t: &Throughput, values: &mut [f64]) -> &'static str {
        let n = match *t {
            Throughput::Elements(n) => n as f64,
            _ => 1.0,
        };
        values.iter_mut().for_each(|v| *v = n * 1e3 / *v);
        "Mreg/cpu-s"
    }
    fn scale_for_machines(&self, _values: &mut [f64]) -> &'static str {
        "ns"
    }
}

fn bench_publish(c: &mut Criterion<ThreadCpu>) {
    let device: Arc<str> = Arc::from("bench");
    let mut g = c.benchmark_group("publish_1000_registers");
    // Throughput in registers.
    g.throughput(Throughput::Elements(1000));
    for (name, points) in thousand_registers() {
        let a = adapter(&points);
        let answers = blocks(&a);
        assert_eq!(answers.len(), 8, "8 reads of 125 registers");
        assert!(answers.iter().all(|(r, _)| r.count == 125));
        let pts = &a.config().points;
        let n: usize = answers
            .iter()
            .map(|(r, w)| take(&device, pts, r, w).len())
            .sum();
        assert_eq!(n, pts.len(), "every point decodes");
        for (r, w) in &answers {
            for &i in &r.points {
                let p = &pts[i];
                let off = usize::from(p.address - r.address);
                let naive = naive_decode(&p.format, &w[off..off + usize::from(p.count())]);
                let new = decode_point(p, r.address, w, &[]).ok();
                assert_eq!(naive, new, "point {}", p.name);
            }
        }
        g.bench_function(format!("{name}/decode_only_naive"), |b| {
            b.iter(|| {
                answers
                    .iter()
                    .map(|(r, w)| naive_values(pts, black_box(r), black_box(w)))
                    .sum::<usize>()
            })
        });
        g.bench_function(format!("{name}/decode_only"), |b| {
            b.iter(|| {
                answers
                    .iter()
                    .map(|(r, w)| values(pts, black_box(r), black_box(w)))
                    .sum::<usize>()
            })
        });
        g.bench_function(format!("{name}/readings"), |b| {
            b.iter(|| {
                answers
                    .iter()
                    .map(|(r, w)| take(&device, pts, black_box(r), black_box(w)))
                    .collect::<Vec<_>>()
            })
        });
        g.bench_function(format!("{name}/readings_and_mqtt_messages"), |b| {
            b.iter(|| {
                let mut messages = Vec::with_capacity(pts.len());
                for (r, w) in &answers {
                    for reading in take(&device, pts, black_box(r), black_box(w)) {
                        messages.push(message("sensorgate", &reading));
                    }
                }
                messages
            })
        });
        // What the daemon could save: the time text made once per answer (all readings
        // of an answer share their time) instead of once per reading.
        g.bench_function(format!("{name}/readings_and_mqtt_messages_ts_once"), |b| {
            b.iter(|| {
                let mut messages = Vec::with_capacity(pts.len());
                for (r, w) in &answers {
                    let readings = take(&device, pts, black_box(r), black_box(w));
                    let ts = readings
                        .first()
                        .map(|r| format_ts(r.ts))
                        .unwrap_or_default();
                    for reading in &readings {
                        let topic = format!("sensorgate/{}/{}", reading.device, reading.point);
                        let p = Payload {
                            value: &reading.value,
                            unit: reading.unit.as_deref(),
                            ts: ts.clone(),
                        };
                        messages.push((topic, serde_json::to_vec(&p).unwrap_or_default()));
                    }
                }
                messages
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench_decode, bench_plan);
criterion_group! {
    name = cpu;
    config = Criterion::default().with_measurement(ThreadCpu);
    targets = bench_publish
}
criterion_main!(benches, cpu);
