//! Outbox append rate: group commit (several tasks appending at once; the outbox task
//! puts every append waiting into one transaction) against one message per transaction,
//! on a temp file with the daemon's settings (WAL, `synchronous = NORMAL`). See
//! benches/README.md. Without any argument (`cargo test --benches`) it makes a quick
//! smoke run; `cargo bench` passes `--bench` and measures.
//!
//! ```sh
//! cargo bench -p sensorgate --bench outbox                        # the default scenarios
//! cargo bench -p sensorgate --bench outbox -- --count 200000 --rounds 5 --tasks 4,16,64
//! ```

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sensorgate::buffer::{NewMessage, Outbox};
use sensorgate::config::BufferConfig;

struct Args {
    count: usize,
    single_count: usize,
    size: usize,
    tasks: Vec<usize>,
    rounds: usize,
    json: bool,
}

const USAGE: &str = "usage: outbox [--count N] [--single-count N] [--size BYTES] \
[--tasks T1,T2,..] [--rounds R] [--json]";

fn parse_args() -> Args {
    let mut a = Args {
        count: 100_000,
        single_count: 20_000,
        size: 70,
        tasks: vec![4, 16, 64],
        rounds: 3,
        json: false,
    };
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing: a quick smoke
    // run then, not minutes of benchmark.
    if std::env::args().len() == 1 {
        eprintln!("no arguments (cargo test?): a smoke run; `cargo bench` measures");
        a.count = 2_000;
        a.single_count = 200;
        a.rounds = 1;
    }
    let mut it = std::env::args().skip(1);
    let num = |v: Option<String>, name: &str| -> usize {
        v.and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{name} needs a number\n{USAGE}"))
    };
    while let Some(arg) = it.next() {
        match arg.as_str() {
            // cargo bench passes --bench to a harness = false target.
            "--bench" => {}
            "--count" => a.count = num(it.next(), "--count"),
            "--single-count" => a.single_count = num(it.next(), "--single-count"),
            "--size" => a.size = num(it.next(), "--size"),
            "--rounds" => a.rounds = num(it.next(), "--rounds").max(1),
            "--tasks" => {
                a.tasks = it
                    .next()
                    .unwrap_or_default()
                    .split(',')
                    .map(|t| t.trim().parse().expect("--tasks: numbers, comma-separated"))
                    .collect()
            }
            "--json" => a.json = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => panic!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    a
}

/// A reading-like JSON payload of exactly `size` bytes (padded with spaces inside the
/// object when the value is short).
fn payload(i: usize, size: usize) -> Vec<u8> {
    let body = format!("{{\"value\":{i},\"unit\":\"°C\",\"ts\":\"2026-11-22T02:46:03.123Z\"");
    let mut p = body.into_bytes();
    while p.len() + 1 < size {
        p.push(b' ');
    }
    p.push(b'}');
    p
}

fn message(topic: &str, i: usize, size: usize) -> NewMessage {
    NewMessage {
        topic: format!("{topic}/{}", i % 10),
        payload: payload(i, size),
        qos: 1,
        retain: false,
    }
}

fn config() -> BufferConfig {
    BufferConfig {
        max_bytes: 4 * 1024 * 1024 * 1024,
        ..BufferConfig::default()
    }
}

async fn open(dir: &Path) -> Outbox {
    Outbox::open(dir, &config()).await.expect("open the outbox")
}

/// `tasks` tasks append `count` messages between them, one message per call; returns
/// the elapsed time (all appends committed).
async fn concurrent(dir: &Path, tasks: usize, count: usize, size: usize) -> Duration {
    let outbox = open(dir).await;
    let per = count / tasks;
    let start = Arc::new(tokio::sync::Barrier::new(tasks + 1));
    let mut set = tokio::task::JoinSet::new();
    for t in 0..tasks {
        let (outbox, start) = (outbox.clone(), start.clone());
        let msgs: Vec<NewMessage> = (0..per)
            .map(|i| message("bench/append", t * per + i, size))
            .collect();
        set.spawn(async move {
            start.wait().await;
            for m in msgs {
                let r = outbox.append(vec![m]).await.expect("append");
                assert_eq!(r.stored, 1);
            }
        });
    }
    start.wait().await;
    let t0 = Instant::now();
    while let Some(r) = set.join_next().await {
        r.expect("append task");
    }
    let elapsed = t0.elapsed();
    let stats = outbox.stats().await.expect("stats");
    assert_eq!(stats.count as usize, per * tasks, "every message stored");
    outbox.close().await;
    elapsed
}

/// Batches of `batch` messages from one task (a device poll with many points).
async fn batched(dir: &Path, batch: usize, count: usize, size: usize) -> Duration {
    let outbox = open(dir).await;
    let msgs: Vec<NewMessage> = (0..count)
        .map(|i| message("bench/append", i, size))
        .collect();
    let t0 = Instant::now();
    for chunk in msgs.chunks(batch) {
        outbox.append(chunk.to_vec()).await.expect("append");
    }
    let elapsed = t0.elapsed();
    outbox.close().await;
    elapsed
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let a = parse_args();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    // (name, messages per call, concurrent tasks, messages)
    let mut scenarios: Vec<(String, usize, usize, usize)> =
        vec![("one at a time".into(), 1, 1, a.single_count)];
    for &t in &a.tasks {
        scenarios.push((format!("group commit, {t} tasks"), 1, t, a.count));
    }
    scenarios.push(("batches of 100, 1 task".into(), 100, 1, a.count));

    println!(
        "outbox append, {} B payloads, WAL + synchronous=NORMAL, {} round(s), median msgs/s",
        a.size, a.rounds
    );
    println!(
        "{:<28} {:>9} {:>12} {:>12} {:>12}",
        "scenario", "messages", "median/s", "min/s", "max/s"
    );
    let mut json = Vec::new();
    for (name, per_call, tasks, count) in scenarios {
        let mut rates = Vec::new();
        for _ in 0..a.rounds {
            let dir = tempfile::tempdir().expect("tempdir");
            let elapsed = rt.block_on(async {
                if per_call == 1 {
                    concurrent(dir.path(), tasks, count, a.size).await
                } else {
                    batched(dir.path(), per_call, count, a.size).await
                }
            });
            let n = if per_call == 1 {
                (count / tasks) * tasks
            } else {
                count
            };
            rates.push(n as f64 / elapsed.as_secs_f64());
        }
        let min = rates.iter().copied().fold(f64::INFINITY, f64::min);
        let max = rates.iter().copied().fold(0.0, f64::max);
        let med = median(rates.clone());
        println!("{name:<28} {count:>9} {med:>12.0} {min:>12.0} {max:>12.0}");
        json.push(format!(
            "{{\"scenario\":\"{name}\",\"tasks\":{tasks},\"per_call\":{per_call},\"messages\":{count},\"median_msgs_per_s\":{med:.0},\"min\":{min:.0},\"max\":{max:.0}}}"
        ));
    }
    if a.json {
        println!("[{}]", json.join(","));
    }
}
