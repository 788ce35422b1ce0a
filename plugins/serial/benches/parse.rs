//! The line parser per format, each next to a plain peer in the same run, so that the
//! ratio says what the plugin's own work costs on top of the bare parse:
//! - json: `Decoder` (line → readings) vs `serde_json::from_str::<serde_json::Value>`;
//! - kv: `Decoder` vs a plain `split(',')` + `split_once('=')` into `(&str, &str)`;
//! - csv: `Decoder` vs a plain `split(',')` into `&str`s;
//! - regex: `Decoder` vs the same `Regex::captures` with its groups taken as `&str`;
//! - framing: `Framer` on a 4 KiB read of many lines vs `split(b'\n')` of the same bytes.
//!
//! Run: `cargo bench -p sensorgate-serial --bench parse`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sensorgate_api::config::DeviceSpec;
use sensorgate_serial::parse::{Decoder, Frame, Framer};
use sensorgate_serial::SerialConfig;

const JSON: &str = r#"{"temp": 21.5, "hum": 40, "pressure": 1013.2, "wind": 3.4, "dir": 270, "rain": 0.2, "ok": true}"#;
const KV: &str = "temp=21.5,hum=40,pressure=1013.2,wind=3.4,dir=270,rain=0.2,ok=true";
const CSV: &str = "21.5,40,1013.2,3.4,270,0.2,true";
const REGEX_LINE: &str = "WS1 T=21.5C H=40% P=1013.2hPa W=3.4m/s D=270 R=0.2mm";
const REGEX: &str = r"T=(?P<temp>-?[0-9.]+)C H=(?P<hum>[0-9]+)% P=(?P<pressure>[0-9.]+)hPa W=(?P<wind>[0-9.]+)m/s D=(?P<dir>[0-9]+) R=(?P<rain>[0-9.]+)mm";

fn decoder(table: &str) -> Decoder {
    let spec = DeviceSpec {
        name: "bench".into(),
        plugin: "serial".into(),
        poll_interval: Duration::from_secs(1),
        state_dir: std::env::temp_dir(),
        table: toml::from_str(&format!("port = \"/dev/null\"\n{table}")).expect("bench TOML"),
    };
    let config = SerialConfig::from_spec(&spec).expect("bench config builds");
    Decoder::new(Arc::from("bench"), &config)
}

fn formats(c: &mut Criterion) {
    let ts = SystemTime::now();
    let cases: [(&str, &str, String); 4] = [
        ("json", JSON, "format = \"json\"".into()),
        ("kv", KV, "format = \"kv\"".into()),
        (
            "csv",
            CSV,
            "format = \"csv\"\ncolumns = [\"temp\", \"hum\", \"pressure\", \"wind\", \"dir\", \"rain\", \"ok\"]"
                .into(),
        ),
        ("regex", REGEX_LINE, format!("format = \"regex\"\nregex = '{REGEX}'")),
    ];
    let re = regex::Regex::new(REGEX).expect("bench regex");
    for (name, line, table) in cases {
        let mut g = c.benchmark_group(format!("line/{name}"));
        g.throughput(Throughput::Elements(1));
        let mut dec = decoder(&table);
        let mut out = Vec::with_capacity(8);
        g.bench_function("decoder", |b| {
            b.iter(|| {
                out.clear();
                let d = dec.decode(black_box(line.as_bytes()), ts, &mut out);
                black_box(d.is_ok());
                black_box(out.len())
            })
        });
        match name {
            "json" => g.bench_function("peer_serde_json_value", |b| {
                b.iter(|| {
                    let v: serde_json::Value =
                        serde_json::from_str(black_box(line)).expect("bench JSON");
                    black_box(v)
                })
            }),
            "kv" => g.bench_function("peer_split", |b| {
                b.iter(|| {
                    let pairs: Vec<(&str, &str)> = black_box(line)
                        .split(',')
                        .filter_map(|p| p.split_once('='))
                        .collect();
                    black_box(pairs)
                })
            }),
            "csv" => g.bench_function("peer_split", |b| {
                b.iter(|| {
                    let fields: Vec<&str> = black_box(line).split(',').collect();
                    black_box(fields)
                })
            }),
            _ => g.bench_function("peer_regex_captures", |b| {
                b.iter(|| {
                    let caps = re.captures(black_box(line)).expect("bench line matches");
                    let groups: Vec<&str> = re
                        .capture_names()
                        .flatten()
                        .filter_map(|n| caps.name(n).map(|m| m.as_str()))
                        .collect();
                    black_box(groups)
                })
            }),
        };
        g.finish();
    }
}

fn framing(c: &mut Criterion) {
    // One 4 KiB read holding whole kv lines, as a busy port hands them over.
    let mut chunk = Vec::new();
    while chunk.len() + KV.len() + 2 <= 4096 {
        chunk.extend_from_slice(KV.as_bytes());
        chunk.extend_from_slice(b"\r\n");
    }
    let lines = chunk.iter().filter(|&&b| b == b'\n').count() as u64;
    let mut g = c.benchmark_group("framing/4KiB");
    g.throughput(Throughput::Elements(lines));
    let mut framer = Framer::new(b"\n", 1024);
    let mut out: Vec<Frame> = Vec::with_capacity(lines as usize);
    g.bench_function("framer", |b| {
        b.iter(|| {
            out.clear();
            framer.push(black_box(&chunk), &mut out);
            black_box(out.len())
        })
    });
    g.bench_function("peer_split_to_vec", |b| {
        b.iter(|| {
            let v: Vec<Vec<u8>> = black_box(&chunk[..chunk.len() - 1])
                .split(|&b| b == b'\n')
                .map(<[u8]>::to_vec)
                .collect();
            black_box(v.len())
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = formats, framing
}
criterion_main!(benches);
