//! [`SerialAdapter`]: opens the port, reads lines, publishes one batch of readings per
//! line; writes the query of a request/response device every `poll_interval`; goes
//! offline when the port goes away and reopens it with back-off.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use sensorgate_api::{
    async_trait, Adapter, AdapterContext, AdapterError, Backoff, ConfigError, DeviceSpec, PointInfo,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_serial::{SerialPortBuilderExt, SerialStream};

use crate::config::{Format, Parity, SerialConfig};
use crate::parse::{truncate, Decoder, Frame, Framer};

/// The first wait before reopening a port that is missing or went away.
pub const REOPEN_MIN: Duration = Duration::from_millis(250);
/// The longest wait between two tries to open the port.
pub const REOPEN_MAX: Duration = Duration::from_secs(30);
/// Line problems are logged at most this often (with the counts so far).
pub const WARN_EVERY: Duration = Duration::from_secs(60);
/// How much of a bad line the log shows.
const LOG_LINE_BYTES: usize = 120;

/// Counters of one device since it was built, for tests, benchmarks and logs.
#[derive(Debug, Default)]
pub struct Stats {
    /// Lines framed (good, malformed and blank; not the too long ones).
    pub lines: AtomicU64,
    /// Lines that gave readings.
    pub parsed: AtomicU64,
    /// Lines that gave none: not the format, or no value in them.
    pub malformed: AtomicU64,
    /// Lines longer than `max_line_length`, dropped.
    pub too_long: AtomicU64,
    /// Keys skipped in good lines (no point name even lower-cased; JSON null or array).
    pub skipped_keys: AtomicU64,
    /// Readings handed to the daemon.
    pub readings: AtomicU64,
    /// Queries (`send`) without an answer within `timeout`.
    pub timeouts: AtomicU64,
    /// Times the port was opened.
    pub opens: AtomicU64,
}

/// A copy of [`Stats`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub lines: u64,
    pub parsed: u64,
    pub malformed: u64,
    pub too_long: u64,
    pub skipped_keys: u64,
    pub readings: u64,
    pub timeouts: u64,
    pub opens: u64,
}

impl Stats {
    pub fn snapshot(&self) -> StatsSnapshot {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StatsSnapshot {
            lines: g(&self.lines),
            parsed: g(&self.parsed),
            malformed: g(&self.malformed),
            too_long: g(&self.too_long),
            skipped_keys: g(&self.skipped_keys),
            readings: g(&self.readings),
            timeouts: g(&self.timeouts),
            opens: g(&self.opens),
        }
    }
}

fn bump(a: &AtomicU64, n: u64) {
    a.fetch_add(n, Ordering::Relaxed);
}

/// One serial device.
pub struct SerialAdapter {
    config: SerialConfig,
    stats: Arc<Stats>,
}

/// How a session on an open port ended.
enum End {
    /// Cancelled, or the daemon stopped taking readings.
    Stop,
    /// The port failed (unplugged, read or write error, end of file).
    Lost(String),
}

impl SerialAdapter {
    pub fn new(config: SerialConfig) -> SerialAdapter {
        SerialAdapter {
            config,
            stats: Arc::default(),
        }
    }

    /// Parse the device's keys and build it.
    pub fn from_spec(spec: &DeviceSpec) -> Result<SerialAdapter, Vec<ConfigError>> {
        Ok(SerialAdapter::new(SerialConfig::from_spec(spec)?))
    }

    /// The device's counters; they stay readable while it runs.
    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    pub fn config(&self) -> &SerialConfig {
        &self.config
    }

    fn open(&self) -> Result<SerialStream, String> {
        let c = &self.config;
        let parity = match c.parity {
            Parity::None => tokio_serial::Parity::None,
            Parity::Even => tokio_serial::Parity::Even,
            Parity::Odd => tokio_serial::Parity::Odd,
        };
        let data_bits = match c.data_bits {
            5 => tokio_serial::DataBits::Five,
            6 => tokio_serial::DataBits::Six,
            7 => tokio_serial::DataBits::Seven,
            _ => tokio_serial::DataBits::Eight,
        };
        let stop_bits = match c.stop_bits {
            2 => tokio_serial::StopBits::Two,
            _ => tokio_serial::StopBits::One,
        };
        tokio_serial::new(&c.port, c.baud)
            .parity(parity)
            .data_bits(data_bits)
            .stop_bits(stop_bits)
            .flow_control(tokio_serial::FlowControl::None)
            .open_native_async()
            .map_err(|e| format!("cannot open serial port {}: {e}", c.port))
    }

    /// Read lines from an open port until it fails or the run is cancelled.
    async fn session(
        &mut self,
        ctx: &mut AdapterContext,
        mut port: SerialStream,
        backoff: &mut Backoff,
    ) -> End {
        let device = ctx.device.clone();
        let c = &self.config;
        let mut framer = Framer::new(&c.delimiter, c.max_line_length);
        let mut decoder = Decoder::new(device.clone(), c);
        let mut warn = LineWarnings::default();
        let mut buf = vec![0u8; 4096];
        let mut frames = Vec::new();
        let mut readings = Vec::new();
        let send = c.send.clone();
        let timeout = c.timeout;
        let mut ticker = tokio::time::interval(ctx.poll_interval.max(Duration::from_millis(1)));
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // The deadline of the answer to the last query, until a line comes.
        let mut awaiting: Option<Instant> = None;
        let mut commands_open = true;

        if ctx.set_online(true).await.is_err() {
            return End::Stop;
        }
        loop {
            tokio::select! {
                _ = ctx.cancel.cancelled() => return End::Stop,
                read = port.read(&mut buf) => {
                    let n = match read {
                        Ok(0) => return End::Lost("end of file (the device went away)".into()),
                        Ok(n) => n,
                        Err(e) => return End::Lost(e.to_string()),
                    };
                    let ts = SystemTime::now();
                    backoff.reset();
                    frames.clear();
                    framer.push(&buf[..n], &mut frames);
                    for frame in frames.drain(..) {
                        let line = match frame {
                            Frame::TooLong => {
                                bump(&self.stats.too_long, 1);
                                warn.problem(&device, &self.stats, "longer than max_line_length", None);
                                continue;
                            }
                            Frame::Line(line) => line,
                        };
                        bump(&self.stats.lines, 1);
                        if line.iter().all(u8::is_ascii_whitespace) {
                            continue;
                        }
                        // Any line answers the query, even one that does not parse: the
                        // device is there (the bad line is counted as such).
                        let answered = awaiting.take().is_some();
                        readings.clear();
                        match decoder.decode(&line, ts, &mut readings) {
                            Ok(d) => {
                                bump(&self.stats.parsed, 1);
                                bump(&self.stats.skipped_keys, d.skipped_keys as u64);
                                bump(&self.stats.readings, d.readings as u64);
                            }
                            Err(e) => {
                                bump(&self.stats.malformed, 1);
                                warn.problem(&device, &self.stats, &e.to_string(), Some(&line));
                                continue;
                            }
                        }
                        if answered && ctx.is_online() == Some(false) {
                            log::info!("device {device}: answers again on {}", self.config.port);
                        }
                        let batch = std::mem::take(&mut readings);
                        if ctx.publish(batch).await.is_err() {
                            return End::Stop;
                        }
                    }
                }
                _ = ticker.tick(), if send.is_some() => {
                    // The last query still waits for its answer (or its timeout).
                    if awaiting.is_some() {
                        continue;
                    }
                    let Some(query) = &send else { continue };
                    // Bytes of an unfinished line are stale now: drop them.
                    framer.reset();
                    if let Err(e) = write_all(&mut port, query).await {
                        return End::Lost(format!("cannot write the query: {e}"));
                    }
                    awaiting = Some(Instant::now() + timeout);
                }
                _ = sleep_until_opt(awaiting) => {
                    awaiting = None;
                    if self.no_answer(ctx).await.is_err() {
                        return End::Stop;
                    }
                }
                cmd = ctx.commands.recv(), if commands_open => match cmd {
                    None => commands_open = false,
                    Some(cmd) => log::warn!(
                        "device {device}: write to point {:?} refused: serial points are read-only",
                        cmd.point
                    ),
                },
            }
        }
    }

    /// A query got no answer within `timeout`: count it, and the device is offline
    /// until one comes (the port stays open).
    async fn no_answer(&self, ctx: &mut AdapterContext) -> Result<(), ()> {
        bump(&self.stats.timeouts, 1);
        if ctx.is_online() != Some(false) {
            log::warn!(
                "device {} offline: no answer on {} within {:?}",
                ctx.device,
                self.config.port,
                self.config.timeout
            );
        }
        ctx.set_online(false).await.map_err(|_| ())
    }
}

async fn write_all(port: &mut SerialStream, bytes: &[u8]) -> std::io::Result<()> {
    port.write_all(bytes).await?;
    port.flush().await
}

/// Sleep until `at`; never, for `None`.
async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Logs line problems at most once per [`WARN_EVERY`], with the counts so far.
#[derive(Default)]
struct LineWarnings {
    last: Option<Instant>,
}

impl LineWarnings {
    fn problem(&mut self, device: &str, stats: &Stats, what: &str, line: Option<&[u8]>) {
        if self.last.is_some_and(|t| t.elapsed() < WARN_EVERY) {
            return;
        }
        self.last = Some(Instant::now());
        let s = stats.snapshot();
        let shown = line
            .map(|l| {
                let text = String::from_utf8_lossy(l);
                let cut = truncate(&text, LOG_LINE_BYTES);
                let more = if cut.len() < text.len() { "…" } else { "" };
                format!(": {cut:?}{more}")
            })
            .unwrap_or_default();
        log::warn!(
            "device {device}: line skipped, {what}{shown} ({} malformed and {} too long so far, \
             {} parsed; next report in a minute at the earliest)",
            s.malformed,
            s.too_long,
            s.parsed
        );
    }
}

#[async_trait]
impl Adapter for SerialAdapter {
    fn points(&self) -> Vec<PointInfo> {
        let c = &self.config;
        let mut out: Vec<PointInfo> = c
            .points
            .iter()
            .map(|p| {
                let mut source = format!("key {:?}", p.key);
                if let Some((s, o)) = p.scale {
                    source.push_str(&format!(" * {s} + {o}"));
                }
                PointInfo {
                    name: p.name.to_string(),
                    unit: p.unit.as_deref().map(str::to_string),
                    writable: false,
                    device_class: p.device_class.clone(),
                    state_class: p.state_class.clone(),
                    source,
                }
            })
            .collect();
        if !c.only_listed {
            // The keys the format itself names (csv columns, regex groups).
            let known: Vec<&str> = match &c.format {
                Format::Csv { columns, .. } => columns.iter().flatten().map(|c| &**c).collect(),
                Format::Regex(re) => re.capture_names().flatten().collect(),
                Format::Auto { .. } | Format::Json | Format::Kv { .. } => Vec::new(),
            };
            for k in known {
                if !c.points.iter().any(|p| p.key == k) {
                    out.push(PointInfo {
                        name: k.to_string(),
                        unit: None,
                        writable: false,
                        device_class: None,
                        state_class: None,
                        source: format!("key {k:?}"),
                    });
                }
            }
        }
        out
    }

    fn describe(&self) -> Vec<String> {
        let c = &self.config;
        let mode = match &c.send {
            Some(q) => format!(
                "request/response: sends {:?} every poll_interval, answer within {:?}",
                String::from_utf8_lossy(q),
                c.timeout
            ),
            None => "streaming: every line is one batch of readings".to_string(),
        };
        let mut lines = vec![
            format!("port {} {}", c.port, c.line_settings()),
            format!(
                "format {}, lines end at {:?}, at most {} bytes",
                c.format.name(),
                String::from_utf8_lossy(&c.delimiter),
                c.max_line_length
            ),
            mode,
        ];
        if !c.only_listed
            && matches!(
                c.format,
                Format::Auto { .. } | Format::Json | Format::Kv { .. }
            )
        {
            lines.push("every key of a line is a point (listed points add unit and scale)".into());
        }
        lines
    }

    async fn run(&mut self, ctx: &mut AdapterContext) -> Result<(), AdapterError> {
        let mut backoff = Backoff::new(REOPEN_MIN, REOPEN_MAX);
        // Whether the last failure to open was logged at WARN already.
        let mut missing_told = false;
        loop {
            if ctx.cancel.is_cancelled() {
                return Ok(());
            }
            match self.open() {
                Ok(port) => {
                    bump(&self.stats.opens, 1);
                    missing_told = false;
                    log::info!(
                        "device {}: serial port {} open ({})",
                        ctx.device,
                        self.config.port,
                        self.config.line_settings()
                    );
                    match self.session(ctx, port, &mut backoff).await {
                        End::Stop => return Ok(()),
                        End::Lost(why) => log::warn!(
                            "device {} offline: serial port {} lost: {why}; reopening it when it comes back",
                            ctx.device,
                            self.config.port
                        ),
                    }
                }
                Err(e) => {
                    if missing_told {
                        log::debug!("device {}: still offline: {e}", ctx.device);
                    } else {
                        log::warn!("device {} offline: {e}; retrying with back-off", ctx.device);
                        missing_told = true;
                    }
                }
            }
            if ctx.set_online(false).await.is_err() {
                return Ok(());
            }
            if ctx.sleep(backoff.next_delay()).await.is_err() {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn open_errors_name_the_port() {
        let dir = std::env::temp_dir().join("sensorgate-serial-no-such-port");
        let spec = DeviceSpec {
            name: "station".into(),
            plugin: "serial".into(),
            poll_interval: Duration::from_secs(1),
            state_dir: std::env::temp_dir(),
            table: toml::from_str(&format!("port = {:?}", dir.display().to_string()))
                .expect("test TOML"),
        };
        let adapter = SerialAdapter::from_spec(&spec).expect("builds");
        let Err(e) = adapter.open() else {
            panic!("a port that does not exist opens")
        };
        assert!(
            e.starts_with(&format!("cannot open serial port {}: ", dir.display())),
            "{e}"
        );
        eprintln!("{e}");
    }
}
