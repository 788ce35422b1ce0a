//! `mqtt-load`: an MQTT load generator for broker benchmarks.
//!
//! P publishers each send `--count` messages to `<prefix>/<publisher id>`; S subscribers,
//! all subscribed to `<prefix>/#` (and SUBACKed) before the first publish, check every
//! message they receive. Each payload starts with a 24-byte header, little endian:
//! `run id (u32) | publisher id (u32) | sequence (u64) | send time (u64, ns since the Unix
//! epoch)`, padded with zeros to `--size`. Messages whose run id is not this run's are
//! counted as `foreign` and otherwise ignored.
//!
//! The result is one JSON line on stdout; progress and warnings go to stderr. Exit status:
//! 0 = measured (loss, if any, is in the JSON), 1 = could not connect (nothing on stdout),
//! 2 = bad arguments, 3 = measured, but a connection broke during the run (see `errors`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::Parser;
use rumqttc::{
    AsyncClient, ClientError, ConnectionError, Event, EventLoop, MqttOptions, NetworkOptions,
    Outgoing, Packet, QoS, Request, SubscribeReasonCode,
};
use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Bytes of the payload header (run id, publisher id, sequence, timestamp).
const HEADER: usize = 24;
/// How long a connection (TCP + CONNACK, and SUBACK for subscribers) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the coordinator looks at the counters.
const TICK: Duration = Duration::from_millis(10);

#[derive(Parser, Debug, Clone)]
#[command(
    name = "mqtt-load",
    about = "MQTT load generator: P publishers -> broker -> S subscribers; prints one JSON line",
    // A later `--count 5` replaces an earlier one: scripts append overrides to defaults.
    args_override_self = true
)]
struct Args {
    /// Broker host.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Broker port.
    #[arg(long)]
    port: u16,
    /// Number of publishing connections.
    #[arg(long, default_value_t = 1)]
    publishers: u32,
    /// Number of subscribing connections (each subscribes to `<topic>/#`).
    #[arg(long, default_value_t = 1)]
    subscribers: u32,
    /// QoS of the publishes and the subscriptions.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=1))]
    qos: u8,
    /// Payload size in bytes (at least 24, the header).
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Messages per publisher.
    #[arg(long, default_value_t = 200_000)]
    count: u64,
    /// Messages per second per publisher; 0 = as fast as possible.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Topic prefix; publisher i publishes to `<topic>/<i>`.
    #[arg(long, default_value = "load")]
    topic: String,
    /// Stop waiting when nothing has arrived for this many seconds after publishing finished.
    #[arg(long, default_value_t = 5.0)]
    idle_timeout: f64,
    /// Hard cap on the whole run, in seconds (connecting included).
    #[arg(long, default_value_t = 120.0)]
    max_time: f64,
    /// Unacknowledged QoS 1 publishes per publisher (rumqttc's inflight window).
    #[arg(long, default_value_t = 100)]
    inflight: u16,
    /// Capacity of each publisher's rumqttc request channel.
    #[arg(long, default_value_t = 1024)]
    channel_capacity: usize,
    /// Set TCP_NODELAY on the client sockets (rumqttc's default is off). Use it for latency
    /// runs at a fixed --rate, so that the client's Nagle delay does not count against the broker.
    #[arg(long)]
    nodelay: bool,
    /// Tokio worker threads (0 = one per CPU).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// User name of every connection (with --password); none by default.
    #[arg(long)]
    username: Option<String>,
    /// Password of every connection.
    #[arg(long, default_value = "")]
    password: String,
}

fn main() {
    let args = Args::parse();
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    if args.threads > 0 {
        rt.worker_threads(args.threads);
    }
    let rt = match rt.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mqtt-load: cannot start the tokio runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = match rt.block_on(run(args)) {
        Ok((line, clean)) => {
            println!("{line}");
            if clean {
                0
            } else {
                3
            }
        }
        Err(e) => {
            eprintln!("mqtt-load: error: {e:#}");
            1
        }
    };
    // Tasks still blocked on a dead connection must not delay the exit.
    rt.shutdown_timeout(Duration::from_millis(200));
    std::process::exit(code);
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// CPU seconds (user + system) this process has used so far, from /proc/self/stat
/// (clock ticks of USER_HZ, which is 100 on Linux); None elsewhere.
fn own_cpu_s() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

fn qos_of(q: u8) -> QoS {
    if q == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    }
}

/// Counters a subscriber shares with the coordinator while it runs.
#[derive(Default)]
struct SubShared {
    unique: AtomicU64,
    last_rx_ns: AtomicU64,
    done: AtomicBool,
}

/// Counters a publisher shares with the coordinator while it runs.
#[derive(Default)]
struct PubShared {
    /// Publishes written to the socket by rumqttc's event loop.
    sent: AtomicU64,
    acked: AtomicU64,
    first_send_ns: AtomicU64,
    last_activity_ns: AtomicU64,
    sender_done: AtomicBool,
    /// When the event loop stopped (DISCONNECT written, error or stop), ns since the epoch.
    loop_done_ns: AtomicU64,
    /// Every publish was handed to the event loop (the sender's final count).
    queued: AtomicU64,
    loop_done: AtomicBool,
}

/// What one subscriber saw.
#[derive(Default)]
struct SubStats {
    received: u64,
    unique: u64,
    duplicates: u64,
    out_of_order: u64,
    foreign: u64,
    last_rx_ns: u64,
    /// Latency of each message in microseconds.
    lat_us: Vec<u32>,
    error: Option<String>,
}

/// Per-publisher bookkeeping inside a subscriber.
struct Track {
    seen: Vec<u64>,
    max_seq: Option<u64>,
}

fn mqtt_options(args: &Args, client_id: String) -> MqttOptions {
    let mut o = MqttOptions::new(client_id, args.host.clone(), args.port);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_clean_session(true);
    o.set_inflight(args.inflight.max(1));
    let max = (args.size + args.topic.len() + 64).max(10 * 1024);
    o.set_max_packet_size(max, max);
    if let Some(user) = &args.username {
        o.set_credentials(user.clone(), args.password.clone());
    }
    o
}

fn network_options(args: &Args) -> NetworkOptions {
    let mut n = NetworkOptions::new();
    n.set_tcp_nodelay(args.nodelay);
    n.set_connection_timeout(CONNECT_TIMEOUT.as_secs());
    n
}

fn describe(args: &Args, e: &ConnectionError) -> String {
    format!(
        "cannot connect to MQTT broker {}:{}: {e}",
        args.host, args.port
    )
}

/// Connects a subscriber and waits for the SUBACK of `<prefix>/#`.
async fn connect_subscriber(
    args: Arc<Args>,
    id: u32,
    run_id: u32,
    limit: Duration,
) -> Result<(AsyncClient, EventLoop)> {
    let (client, mut el) = AsyncClient::new(
        mqtt_options(&args, format!("mqtt-load-{run_id:08x}-sub-{id}")),
        16,
    );
    el.set_network_options(network_options(&args));
    let filter = format!("{}/#", args.topic);
    client
        .subscribe(filter.clone(), qos_of(args.qos))
        .await
        .context("queueing the subscription")?;
    let wait = async {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::SubAck(ack))) => {
                    if ack
                        .return_codes
                        .iter()
                        .any(|c| matches!(c, SubscribeReasonCode::Failure))
                    {
                        bail!("the broker refused the subscription to {filter} (SUBACK failure)");
                    }
                    return Ok(());
                }
                Ok(_) => {}
                Err(e) => bail!("subscriber {id}: {}", describe(&args, &e)),
            }
        }
    };
    match tokio::time::timeout(limit, wait).await {
        Ok(r) => r?,
        Err(_) => bail!(
            "subscriber {id}: no CONNACK/SUBACK from {}:{} within {:.1} s",
            args.host,
            args.port,
            limit.as_secs_f64()
        ),
    }
    Ok((client, el))
}

/// Connects a publisher and waits for its CONNACK.
async fn connect_publisher(
    args: Arc<Args>,
    id: u32,
    run_id: u32,
    limit: Duration,
) -> Result<(AsyncClient, EventLoop)> {
    let (client, mut el) = AsyncClient::new(
        mqtt_options(&args, format!("mqtt-load-{run_id:08x}-pub-{id}")),
        args.channel_capacity.max(1),
    );
    el.set_network_options(network_options(&args));
    let wait = async {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => return Ok(()),
                Ok(_) => {}
                Err(e) => bail!("publisher {id}: {}", describe(&args, &e)),
            }
        }
    };
    match tokio::time::timeout(limit, wait).await {
        Ok(r) => r?,
        Err(_) => bail!(
            "publisher {id}: no CONNACK from {}:{} within {:.1} s",
            args.host,
            args.port,
            limit.as_secs_f64()
        ),
    }
    Ok((client, el))
}

async fn subscriber_loop(
    args: Arc<Args>,
    run_id: u32,
    client: AsyncClient,
    mut el: EventLoop,
    shared: Arc<SubShared>,
    mut stop: watch::Receiver<bool>,
) -> SubStats {
    let words = args.count.div_ceil(64) as usize;
    let mut tracks: Vec<Track> = (0..args.publishers)
        .map(|_| Track {
            seen: vec![0; words],
            max_seq: None,
        })
        .collect();
    let mut st = SubStats {
        lat_us: Vec::with_capacity(
            (args.count as usize)
                .saturating_mul(args.publishers as usize)
                .min(1 << 24),
        ),
        ..SubStats::default()
    };
    loop {
        let ev = tokio::select! {
            _ = stop.changed() => break,
            ev = el.poll() => ev,
        };
        match ev {
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let rx = now_ns();
                let b = &p.payload[..];
                if b.len() < HEADER || u32::from_le_bytes(b[0..4].try_into().unwrap()) != run_id {
                    st.foreign += 1;
                    continue;
                }
                let pub_id = u32::from_le_bytes(b[4..8].try_into().unwrap()) as usize;
                let seq = u64::from_le_bytes(b[8..16].try_into().unwrap());
                let sent = u64::from_le_bytes(b[16..24].try_into().unwrap());
                let Some(t) = tracks.get_mut(pub_id) else {
                    st.foreign += 1;
                    continue;
                };
                if seq >= args.count {
                    st.foreign += 1;
                    continue;
                }
                st.received += 1;
                st.last_rx_ns = rx;
                let lat = rx.saturating_sub(sent) / 1000;
                st.lat_us.push(lat.min(u32::MAX as u64) as u32);
                let (w, bit) = ((seq / 64) as usize, 1u64 << (seq % 64));
                if t.seen[w] & bit != 0 {
                    st.duplicates += 1;
                } else {
                    t.seen[w] |= bit;
                    st.unique += 1;
                    match t.max_seq {
                        Some(m) if seq < m => st.out_of_order += 1,
                        _ => t.max_seq = Some(seq),
                    }
                }
                shared.unique.store(st.unique, Ordering::Relaxed);
                shared.last_rx_ns.store(rx, Ordering::Relaxed);
            }
            Ok(_) => {}
            Err(e) => {
                st.error = Some(format!("subscriber connection lost: {e}"));
                break;
            }
        }
    }
    shared.done.store(true, Ordering::Relaxed);
    if st.error.is_none() {
        let _ = client.try_disconnect();
        let _ = tokio::time::timeout(Duration::from_millis(200), async {
            while let Ok(ev) = el.poll().await {
                if matches!(ev, Event::Outgoing(Outgoing::Disconnect)) {
                    break;
                }
            }
        })
        .await;
    }
    st
}

/// Drives a publisher's rumqttc event loop until its DISCONNECT went out (or an error / stop).
async fn publisher_loop(
    args: Arc<Args>,
    client: AsyncClient,
    mut el: EventLoop,
    shared: Arc<PubShared>,
    mut stop: watch::Receiver<bool>,
) -> Option<String> {
    let qos1 = args.qos == 1;
    let mut sent = 0u64;
    let mut acked = 0u64;
    let mut disconnecting = false;
    let result = loop {
        let ev = tokio::select! {
            _ = stop.changed() => break None,
            ev = el.poll() => ev,
        };
        match ev {
            Ok(Event::Outgoing(Outgoing::Publish(_))) => {
                sent += 1;
                shared.sent.store(sent, Ordering::Relaxed);
                if sent.is_multiple_of(64) {
                    shared.last_activity_ns.store(now_ns(), Ordering::Relaxed);
                }
            }
            Ok(Event::Incoming(Packet::PubAck(_))) => {
                acked += 1;
                shared.acked.store(acked, Ordering::SeqCst);
                if acked.is_multiple_of(64) {
                    shared.last_activity_ns.store(now_ns(), Ordering::Relaxed);
                }
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => break None,
            Ok(_) => {}
            Err(e) => break Some(format!("publisher connection lost: {e}")),
        }
        // QoS 1: disconnect once the sender is done and every publish is acknowledged.
        if qos1
            && !disconnecting
            && shared.sender_done.load(Ordering::SeqCst)
            && acked >= shared.queued.load(Ordering::SeqCst)
        {
            disconnecting = true;
            let _ = client.try_disconnect();
        }
    };
    let t = now_ns();
    shared.last_activity_ns.store(t, Ordering::Relaxed);
    shared.loop_done_ns.store(t, Ordering::Relaxed);
    shared.loop_done.store(true, Ordering::Release);
    result
}

/// Hands `--count` publishes to the event loop, paced by `--rate`.
async fn publisher_sender(
    args: Arc<Args>,
    run_id: u32,
    id: u32,
    client: AsyncClient,
    shared: Arc<PubShared>,
    stop: Arc<AtomicBool>,
) -> Option<String> {
    let topic = format!("{}/{id}", args.topic);
    let qos = qos_of(args.qos);
    let mut buf = vec![0u8; args.size];
    buf[0..4].copy_from_slice(&run_id.to_le_bytes());
    buf[4..8].copy_from_slice(&id.to_le_bytes());
    let start = tokio::time::Instant::now();
    let interval = if args.rate > 0.0 {
        Some(Duration::from_secs_f64(1.0 / args.rate))
    } else {
        None
    };
    let mut queued = 0u64;
    let mut error = None;
    'outer: for seq in 0..args.count {
        if let Some(iv) = interval {
            let due = start + iv.mul_f64(seq as f64);
            if due > tokio::time::Instant::now() {
                tokio::time::sleep_until(due).await;
            }
        }
        if stop.load(Ordering::Relaxed) {
            break;
        }
        buf[8..16].copy_from_slice(&seq.to_le_bytes());
        let mut spins = 0u32;
        loop {
            let ts = now_ns();
            if seq == 0 {
                shared.first_send_ns.store(ts, Ordering::Relaxed);
            }
            buf[16..24].copy_from_slice(&ts.to_le_bytes());
            match client.try_publish(topic.as_str(), qos, false, buf.clone()) {
                Ok(()) => break,
                Err(ClientError::TryRequest(Request::Publish(_))) if !client_closed(&shared) => {
                    // The request channel is full: the event loop is behind. Give it the CPU
                    // instead of spinning (2-core machines: the broker needs it too).
                    spins += 1;
                    if spins <= 4 {
                        tokio::task::yield_now().await;
                    } else {
                        tokio::time::sleep(Duration::from_micros(200)).await;
                    }
                    if stop.load(Ordering::Relaxed) {
                        break 'outer;
                    }
                }
                Err(e) => {
                    error = Some(format!("publisher {id}: the event loop stopped: {e}"));
                    break 'outer;
                }
            }
        }
        queued += 1;
    }
    shared.queued.store(queued, Ordering::SeqCst);
    shared.sender_done.store(true, Ordering::SeqCst);
    shared.last_activity_ns.store(now_ns(), Ordering::Relaxed);
    if error.is_none() {
        if args.qos == 0 {
            // FIFO after the last publish: the event loop stops when it has gone out.
            if client.disconnect().await.is_err() && !shared.loop_done.load(Ordering::Acquire) {
                error = Some(format!("publisher {id}: could not queue DISCONNECT"));
            }
        } else if shared.acked.load(Ordering::SeqCst) >= queued {
            // All acked before the event loop looked at `sender_done`: nudge it.
            let _ = client.try_disconnect();
        }
    }
    error
}

/// How long a connection may take: CONNECT_TIMEOUT, within what is left of --max-time.
fn connect_limit(deadline: Instant) -> Duration {
    CONNECT_TIMEOUT
        .min(deadline.saturating_duration_since(Instant::now()))
        .max(Duration::from_millis(1))
}

fn client_closed(shared: &PubShared) -> bool {
    shared.loop_done.load(Ordering::Acquire)
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[idx.min(sorted.len() - 1)] as f64 / 1000.0
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Runs the benchmark; returns the JSON line and whether every connection stayed up.
async fn run(args: Args) -> Result<(String, bool)> {
    if args.size < HEADER {
        bail!("--size must be at least {HEADER} bytes (the header: run id, publisher id, sequence, timestamp)");
    }
    if args.publishers == 0 || args.subscribers == 0 {
        bail!("--publishers and --subscribers must be at least 1");
    }
    if args.topic.is_empty() || args.topic.contains(['#', '+']) {
        bail!("--topic must be a non-empty topic without wildcards");
    }
    if !(args.rate >= 0.0 && args.rate.is_finite()) {
        bail!("--rate must be a non-negative number");
    }
    let args = Arc::new(args);
    let t0 = Instant::now();
    let cpu0 = own_cpu_s();
    let deadline = t0 + Duration::from_secs_f64(args.max_time.max(0.1));
    let run_id = (now_ns() as u32) ^ std::process::id().rotate_left(16);

    // 1. Subscribers: connected and subscribed before any publisher starts.
    let mut connecting: Vec<JoinHandle<Result<(AsyncClient, EventLoop)>>> = Vec::new();
    for i in 0..args.subscribers {
        connecting.push(tokio::spawn(connect_subscriber(
            args.clone(),
            i,
            run_id,
            connect_limit(deadline),
        )));
    }
    let mut sub_conns = Vec::new();
    for h in connecting {
        sub_conns.push(h.await.context("subscriber connect task")??);
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let stop_flag = Arc::new(AtomicBool::new(false));
    let mut subs = Vec::new();
    for (client, el) in sub_conns {
        let shared = Arc::new(SubShared::default());
        let h = tokio::spawn(subscriber_loop(
            args.clone(),
            run_id,
            client,
            el,
            shared.clone(),
            stop_rx.clone(),
        ));
        subs.push((shared, h));
    }

    // 2. Publishers: connected, then all started together.
    let mut connecting = Vec::new();
    for i in 0..args.publishers {
        connecting.push(tokio::spawn(connect_publisher(
            args.clone(),
            i,
            run_id,
            connect_limit(deadline),
        )));
    }
    let mut pub_conns = Vec::new();
    for h in connecting {
        match h.await.context("publisher connect task")? {
            Ok(c) => pub_conns.push(c),
            Err(e) => {
                let _ = stop_tx.send(true);
                return Err(e);
            }
        }
    }
    eprintln!(
        "mqtt-load: {} subscriber(s) subscribed to {}/#, {} publisher(s) connected to {}:{}; publishing {} x {} B at QoS {} ({})",
        args.subscribers,
        args.topic,
        args.publishers,
        args.host,
        args.port,
        args.count,
        args.size,
        args.qos,
        if args.rate > 0.0 { format!("{} msgs/s each", args.rate) } else { "flat-out".into() }
    );
    let mut pubs = Vec::new();
    for (i, (client, el)) in pub_conns.into_iter().enumerate() {
        let shared = Arc::new(PubShared::default());
        let lh = tokio::spawn(publisher_loop(
            args.clone(),
            client.clone(),
            el,
            shared.clone(),
            stop_rx.clone(),
        ));
        pubs.push((shared, client, lh, i as u32));
    }
    let mut senders = Vec::new();
    for (shared, client, _, i) in &pubs {
        senders.push(tokio::spawn(publisher_sender(
            args.clone(),
            run_id,
            *i,
            client.clone(),
            shared.clone(),
            stop_flag.clone(),
        )));
    }

    // 3. Watch until every subscriber has everything, things go quiet, or time is up.
    let idle = Duration::from_secs_f64(args.idle_timeout.max(0.0));
    let stop_reason = loop {
        tokio::time::sleep(TICK).await;
        let senders_done = pubs.iter().all(|p| p.0.sender_done.load(Ordering::Acquire));
        let loops_done = pubs.iter().all(|p| p.0.loop_done.load(Ordering::Acquire));
        let sent_total: u64 = pubs.iter().map(|p| p.0.sent.load(Ordering::Relaxed)).sum();
        if loops_done
            && subs
                .iter()
                .all(|s| s.0.unique.load(Ordering::Relaxed) >= sent_total)
        {
            break "complete";
        }
        if subs.iter().all(|s| s.0.done.load(Ordering::Relaxed)) {
            break "subscribers_gone";
        }
        if senders_done {
            let last = subs
                .iter()
                .map(|s| s.0.last_rx_ns.load(Ordering::Relaxed))
                .chain(
                    pubs.iter()
                        .map(|p| p.0.last_activity_ns.load(Ordering::Relaxed)),
                )
                .max()
                .unwrap_or(0);
            if now_ns().saturating_sub(last) >= idle.as_nanos() as u64 {
                break "idle_timeout";
            }
        }
        if Instant::now() >= deadline {
            break "max_time";
        }
    };
    stop_flag.store(true, Ordering::Relaxed);
    let _ = stop_tx.send(true);

    let mut errors: Vec<String> = Vec::new();
    let grace = Duration::from_secs(3);
    for h in senders {
        match tokio::time::timeout(grace, h).await {
            Ok(Ok(Some(e))) => errors.push(e),
            Ok(Ok(None)) => {}
            Ok(Err(e)) => errors.push(format!("publisher task failed: {e}")),
            Err(_) => errors.push("publisher did not stop in time".into()),
        }
    }
    let mut first_send = u64::MAX;
    let mut sent_total = 0u64;
    let mut pub_end = 0u64;
    for (shared, _client, lh, _) in pubs {
        match tokio::time::timeout(grace, lh).await {
            Ok(Ok(Some(e))) => errors.push(e),
            Ok(Ok(None)) => {}
            Ok(Err(e)) => errors.push(format!("publisher event loop task failed: {e}")),
            Err(_) => errors.push("publisher event loop did not stop in time".into()),
        }
        sent_total += shared.sent.load(Ordering::Relaxed);
        pub_end = pub_end.max(shared.loop_done_ns.load(Ordering::Relaxed));
        let f = shared.first_send_ns.load(Ordering::Relaxed);
        if f != 0 {
            first_send = first_send.min(f);
        }
    }
    let mut stats = Vec::new();
    for (_, h) in subs {
        match tokio::time::timeout(grace, h).await {
            Ok(Ok(st)) => stats.push(st),
            Ok(Err(e)) => errors.push(format!("subscriber task failed: {e}")),
            Err(_) => errors.push("subscriber did not stop in time".into()),
        }
    }

    // 4. Report.
    let subscribers = args.subscribers as u64;
    let expected = sent_total * subscribers;
    let mut received = 0u64;
    let mut lost = 0u64;
    let mut duplicates = 0u64;
    let mut out_of_order = 0u64;
    let mut foreign = 0u64;
    let mut last_rx = 0u64;
    let mut per_sub = Vec::new();
    let mut lat: Vec<u32> = Vec::new();
    for (i, st) in stats.iter_mut().enumerate() {
        received += st.received;
        let l = sent_total.saturating_sub(st.unique);
        lost += l;
        duplicates += st.duplicates;
        out_of_order += st.out_of_order;
        foreign += st.foreign;
        last_rx = last_rx.max(st.last_rx_ns);
        if let Some(e) = st.error.take() {
            errors.push(format!("subscriber {i}: {e}"));
        }
        per_sub.push(json!({
            "received": st.received, "lost": l, "duplicates": st.duplicates,
            "out_of_order": st.out_of_order,
        }));
        lat.append(&mut st.lat_us);
    }
    // A subscriber task that never came back has lost everything.
    lost += sent_total * (subscribers - stats.len() as u64);
    lat.sort_unstable();
    let elapsed = if first_send != u64::MAX && last_rx > first_send {
        (last_rx - first_send) as f64 / 1e9
    } else {
        0.0
    };
    let msgs_per_s = if elapsed > 0.0 {
        received as f64 / elapsed
    } else {
        0.0
    };
    let publish_s = if first_send != u64::MAX && pub_end > first_send {
        (pub_end - first_send) as f64 / 1e9
    } else {
        0.0
    };
    for e in &errors {
        eprintln!("mqtt-load: warning: {e}");
    }
    if lost > 0 {
        eprintln!("mqtt-load: warning: {lost} of {expected} expected deliveries lost (stop: {stop_reason})");
    }
    let out = json!({
        "publishers": args.publishers,
        "subscribers": args.subscribers,
        "qos": args.qos,
        "size": args.size,
        "rate": args.rate,
        "sent": sent_total,
        "expected": expected,
        "received": received,
        "lost": lost,
        "duplicates": duplicates,
        "out_of_order": out_of_order,
        "foreign": foreign,
        "elapsed_s": round3(elapsed),
        "msgs_per_s": msgs_per_s.round(),
        "p50_ms": round3(percentile(&lat, 50.0)),
        "p99_ms": round3(percentile(&lat, 99.0)),
        "max_ms": round3(lat.last().copied().unwrap_or(0) as f64 / 1000.0),
        "publish_s": round3(publish_s),
        // This process's own CPU: near elapsed_s x cores means the client, not the broker, was the limit.
        "client_cpu_s": own_cpu_s().zip(cpu0).map(|(b, a)| round3(b - a)),
        "stop": stop_reason,
        "run_s": round3(t0.elapsed().as_secs_f64()),
        "errors": errors,
        "per_subscriber": per_sub,
    });
    Ok((out.to_string(), errors.is_empty()))
}
