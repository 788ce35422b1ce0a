//! Registers/s over RTU against the wire limit, projected from a pty.
//!
//! A pty has no baud rate, so this measures what the gateway adds to each transaction
//! beyond the wire and the peer, and projects the fraction of the wire limit it keeps at
//! 9600 and 115200 baud (8N1, 125 registers per request: 444 and 5 333 registers/s).
//!
//! Set-up: a socat pty pair; on one end an in-process tokio-modbus RTU server
//! (`tests/common`) that timestamps each request when it has decoded it and when it has
//! its answer; on the other end either
//! - the gateway: the real adapter (planner, bus task with its frame-gap timing, decode,
//!   readings, publish to a fake daemon that acknowledges at once) polling 1 000 `u16`
//!   points in 8 reads of 125 registers, back to back (poll_interval 1 ms), configured
//!   at the baud rate being projected (the bus keeps the frame gap of that baud rate);
//! - the peer: a plain tokio-modbus RTU client doing the same 8 reads in a loop.
//!
//! Per transaction, the client's time is the time from the server's answer to the
//! server's next request (the server's own time, answer minus request, is left out):
//! writing and reading the pty, the client's framing and decoding, and for the gateway
//! its bus timing, decoding and publishing. On a real line the wire time runs on top:
//! `wire = (8 + 255 bytes) × 10 bits / baud + 2 × 3.5 characters of silence`. The
//! gateway's overhead is its time per transaction minus the 3.5 characters of silence
//! that the wire time already counts (the bus waits at least that long after an answer
//! before the next request), and `fraction = wire / (wire + overhead)`.
//!
//! `cargo bench -p sensorgate-modbus --bench rtu_wire` (RTU_WIRE_CYCLES=N poll cycles
//! per run, 50 by default); the figures are in README.md ("Figures").

use std::time::{Duration, Instant};

use tokio_modbus::client::Reader;
use tokio_modbus::Slave;

#[path = "../tests/common/mod.rs"]
mod common;
use common::{build, serve_rtu, Running, Socat, State, Unit};

/// Reads per poll cycle, registers per read.
const BLOCKS: u16 = 8;
const REGS: u16 = 125;
/// Transactions left out at the start (opening the port, the first cycles).
const WARM_UP: usize = 2 * BLOCKS as usize;

fn unit() -> Unit {
    let mut u = Unit::default();
    let words: Vec<u16> = (0..BLOCKS * REGS).collect();
    u.holding_at(0, &words);
    u
}

/// The client's time after each answer until the next request, and the server's own
/// time per request, past the warm-up.
struct Times {
    client: Vec<Duration>,
    server: Vec<Duration>,
}

impl Times {
    fn of(state: &State) -> Times {
        let times = state.times.lock().expect("times lock").clone();
        let times = &times[WARM_UP.min(times.len())..];
        Times {
            client: times.windows(2).map(|w| w[1].0 - w[0].1).collect(),
            server: times.iter().map(|(got, ans)| *ans - *got).collect(),
        }
    }
}

fn mean(d: &[Duration]) -> Duration {
    d.iter().sum::<Duration>() / (d.len().max(1) as u32)
}

fn percentile(d: &[Duration], p: f64) -> Duration {
    let mut v = d.to_vec();
    v.sort();
    v.get(((v.len() as f64 - 1.0) * p).round() as usize)
        .copied()
        .unwrap_or_default()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// One character of 8N1 at `baud`, in seconds.
fn char_time(baud: u32) -> f64 {
    10.0 / f64::from(baud)
}

/// The wire time of one 125-register transaction at `baud`, in seconds: the request (8
/// bytes), the answer (5 + 250 bytes), and 3.5 characters of silence after each.
fn wire(baud: u32) -> f64 {
    (8.0 + 5.0 + 2.0 * f64::from(REGS) + 2.0 * 3.5) * char_time(baud)
}

async fn gateway(baud: u32, cycles: usize) -> Times {
    let socat = Socat::start();
    let state = State::new([(1, unit())]);
    let server = serve_rtu(&socat.b, state.clone());
    let mut toml = format!(
        "transport = \"rtu\"\nport = \"{}\"\nbaud = {baud}\nunit = 1\ntimeout = \"1s\"\n\
         retries = 0\n",
        socat.a.display()
    );
    for a in 0..BLOCKS * REGS {
        toml.push_str(&format!("[[point]]\nname = \"r{a}\"\naddress = {a}\n"));
    }
    let mut run = Running::start(build("bench", Duration::from_millis(1), &toml), "bench");
    let mut got = 0;
    while got < cycles * usize::from(BLOCKS * REGS) {
        got += run.readings().await.len();
    }
    run.stop().await.expect("a clean stop");
    server.abort();
    let n = state.times.lock().expect("times lock").len();
    assert!(n >= cycles * usize::from(BLOCKS), "{n} requests");
    Times::of(&state)
}

async fn peer(cycles: usize) -> Times {
    let socat = Socat::start();
    let state = State::new([(1, unit())]);
    let server = serve_rtu(&socat.b, state.clone());
    let port =
        tokio_serial::SerialStream::open(&tokio_serial::new(socat.a.to_string_lossy(), 9600))
            .expect("open the client end of the pty");
    let mut ctx = tokio_modbus::client::rtu::attach_slave(port, Slave(1));
    for _ in 0..cycles {
        for b in 0..BLOCKS {
            let words = tokio::time::timeout(
                Duration::from_secs(1),
                ctx.read_holding_registers(b * REGS, REGS),
            )
            .await
            .expect("an answer within 1 s")
            .expect("no transport error")
            .expect("no exception");
            assert_eq!(words.len(), usize::from(REGS));
        }
    }
    server.abort();
    Times::of(&state)
}

fn row(name: &str, t: &Times) {
    println!(
        "{name:<28} client/transaction: mean {:.3} ms, median {:.3} ms, p90 {:.3} ms; \
         server/transaction: mean {:.3} ms; {} transactions",
        ms(mean(&t.client)),
        ms(percentile(&t.client, 0.5)),
        ms(percentile(&t.client, 0.9)),
        ms(mean(&t.server)),
        t.client.len()
    );
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes `--bench` (and filters); nothing to parse here.
    let cycles: usize = std::env::var("RTU_WIRE_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let started = Instant::now();
    let peer = peer(cycles).await;
    row("peer (tokio-modbus client)", &peer);
    let peer_client = mean(&peer.client).as_secs_f64();
    for baud in [9600, 115_200] {
        let g = gateway(baud, cycles).await;
        row(&format!("gateway, baud = {baud}"), &g);
        let client = mean(&g.client).as_secs_f64();
        let silence = 3.5 * char_time(baud);
        let overhead = (client - silence).max(0.0);
        let wire = wire(baud);
        let limit = f64::from(REGS) / wire;
        let projected = f64::from(REGS) / (wire + overhead);
        // The bus's own wait after an answer (the frame gap it keeps), for the part of the
        // client's time that is software, compared with the peer's.
        let gap = if baud > 19200 {
            1.75e-3
        } else {
            3.5 * char_time(baud)
        };
        println!(
            "  at {baud} baud: wire {:.2} ms/transaction, limit {limit:.0} registers/s; \
             gateway overhead {:.3} ms/transaction -> {projected:.0} registers/s = {:.1} % \
             of the wire limit",
            wire * 1e3,
            overhead * 1e3,
            100.0 * wire / (wire + overhead),
        );
        println!(
            "  software beyond the bus's frame gap ({:.3} ms): {:.3} ms/transaction = {:.1} x \
             the peer's {:.3} ms",
            gap * 1e3,
            (client - gap) * 1e3,
            (client - gap) / peer_client,
            peer_client * 1e3
        );
    }
    println!(
        "({cycles} cycles of {BLOCKS} reads each, in {:.1?})",
        started.elapsed()
    );
}
