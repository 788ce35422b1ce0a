//! End to end through a real pty: a thread prints N lines on the peer end of a socat pair
//! as fast as the pty takes them, the adapter reads, parses and publishes them (one batch
//! per line, each acknowledged by the fake daemon of `sensorgate_api::testing`). Prints,
//! per format, lines/s and the CPU time the adapter's thread spent per 10k lines (the
//! adapter and the fake daemon share one current-thread runtime; socat and the writer
//! thread are not counted).
//!
//! Run: `cargo bench -p sensorgate-serial --bench e2e` (N = 100000 lines per format, or
//! set SERIAL_E2E_LINES). Needs socat.

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sensorgate_api::testing::{self, Event};
use sensorgate_serial::SerialAdapter;

struct Socat(Child);

impl Drop for Socat {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// CPU time of the calling thread: schedstat (ns) where the kernel has it, else stat
/// (clock ticks of 10 ms).
fn thread_cpu() -> Duration {
    if let Ok(s) = std::fs::read_to_string("/proc/thread-self/schedstat") {
        if let Some(ns) = s.split_whitespace().next().and_then(|n| n.parse().ok()) {
            return Duration::from_nanos(ns);
        }
    }
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<u64> = after
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // After the command name: state is field 0, utime 11, stime 12.
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

fn run(format: &str, table: &str, line: &str, n: usize) {
    let dir = tempfile::TempDir::new().expect("temp dir");
    let dev = dir.path().join("dev");
    let peer = dir.path().join("peer");
    let _socat = Socat(
        Command::new("socat")
            .arg(format!("pty,raw,echo=0,link={}", dev.display()))
            .arg(format!("pty,raw,echo=0,link={}", peer.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("socat runs"),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(dev.exists() && peer.exists()) {
        assert!(Instant::now() < deadline, "socat made no ptys");
        std::thread::sleep(Duration::from_millis(10));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let spec = testing::spec(
            "serial",
            "bench",
            &format!("port = {:?}\n{table}", dev.display().to_string()),
            dir.path(),
        );
        let adapter = SerialAdapter::from_spec(&spec).expect("config");
        let stats = adapter.stats();
        let mut running = testing::start(Box::new(adapter), "bench", dir.path());
        assert_eq!(
            running.availability(Duration::from_secs(10)).await,
            Some(true)
        );
        let text: Arc<Vec<u8>> = Arc::new(format!("{line}\r\n").repeat(n).into_bytes());
        let cpu0 = thread_cpu();
        let t0 = Instant::now();
        let writer = {
            let text = text.clone();
            let peer = peer.clone();
            std::thread::spawn(move || {
                let mut f = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&peer)
                    .expect("peer");
                for chunk in text.chunks(4096) {
                    f.write_all(chunk).expect("write");
                }
                // Keep the peer open until the reader is done.
                f
            })
        };
        let mut batches = 0;
        let mut readings = 0;
        while batches < n {
            match running.next(Duration::from_secs(10)).await {
                Some(Event::Readings(r)) => {
                    batches += 1;
                    readings += r.len();
                }
                Some(Event::Availability(_)) => {}
                None => panic!("stalled after {batches} lines: {:?}", stats.snapshot()),
            }
        }
        let wall = t0.elapsed();
        let cpu = thread_cpu() - cpu0;
        let s = stats.snapshot();
        assert_eq!(s.malformed, 0, "{s:?}");
        let _peer = writer.join().expect("writer");
        running.stop().await.expect("stop");
        println!(
            "e2e/{format:<6} {n} lines ({} B each), {readings} readings: {:>8.0} lines/s, \
             CPU {:>6.1} ms per 10k lines",
            line.len() + 2,
            n as f64 / wall.as_secs_f64(),
            cpu.as_secs_f64() * 1e3 * 10_000.0 / n as f64,
        );
    });
}

fn main() {
    // `cargo test --benches` runs this too: keep that quick.
    let quick = std::env::args().all(|a| a != "--bench");
    let n: usize = std::env::var("SERIAL_E2E_LINES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if quick { 1000 } else { 100_000 });
    run(
        "json",
        "format = \"json\"",
        r#"{"temp": 21.5, "hum": 40, "pressure": 1013.2, "wind": 3.4, "dir": 270, "rain": 0.2, "ok": true}"#,
        n,
    );
    run(
        "kv",
        "format = \"kv\"",
        "temp=21.5,hum=40,pressure=1013.2,wind=3.4,dir=270,rain=0.2,ok=true",
        n,
    );
    run(
        "csv",
        "format = \"csv\"\ncolumns = [\"temp\", \"hum\", \"pressure\", \"wind\", \"dir\", \"rain\", \"ok\"]",
        "21.5,40,1013.2,3.4,270,0.2,true",
        n,
    );
    run(
        "regex",
        r"format = 'regex'
regex = 'T=(?P<temp>-?[0-9.]+)C H=(?P<hum>[0-9]+)% P=(?P<pressure>[0-9.]+)hPa W=(?P<wind>[0-9.]+)m/s D=(?P<dir>[0-9]+) R=(?P<rain>[0-9.]+)mm'",
        "WS1 T=21.5C H=40% P=1013.2hPa W=3.4m/s D=270 R=0.2mm",
        n,
    );
}
