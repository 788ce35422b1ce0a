//! The running exec device: a program kept running (stream mode) or started once per
//! poll (poll mode), its lines turned into readings.

use std::fmt::Display;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use sensorgate_api::{
    run_poller, Adapter, AdapterContext, AdapterError, Backoff, DeviceSpec, PointInfo, Poller,
    Reading,
};
use tokio::time::Instant;

use crate::child::{self, describe_exit, Running};
use crate::config::{ExecConfig, Mode, MAX_RESTART_DELAY};
use crate::lines::Line;
use crate::protocol::{excerpt, parse_line, LineError, LineReading};

/// A streaming program that ran this long before it ended starts the back-off afresh:
/// its next restart comes after `restart_delay` again.
pub const HEALTHY_AFTER: Duration = Duration::from_secs(30);
/// The most readings one poll run may print; more are skipped and counted, so that a
/// run that floods cannot grow the batch without bound.
pub const MAX_RUN_READINGS: usize = 10_000;
/// Bad lines are logged as a warning at most this often (with their count since).
pub const BAD_LINE_REPORT: Duration = Duration::from_secs(60);
/// After a streaming program's standard output closed: how long it has to exit before it
/// is stopped.
const EXIT_AFTER_EOF: Duration = Duration::from_secs(2);
/// After a streaming program exited: how long a read of the lines still in the pipe may
/// wait for data before the rest is given up.
const DRAIN_IDLE: Duration = Duration::from_secs(1);

/// Counters of a running exec device, shared with whoever asked for them
/// ([`ExecAdapter::stats`]): for tests and for anyone curious.
#[derive(Debug, Default)]
pub struct Stats {
    starts: AtomicU64,
    exits: AtomicU64,
    invalid_lines: AtomicU64,
    timeouts: AtomicU64,
    last_restart_delay_us: AtomicU64,
    pid: AtomicI32,
}

impl Stats {
    /// Programs started (a stream restart, or a poll run).
    pub fn starts(&self) -> u64 {
        self.starts.load(Ordering::Relaxed)
    }
    /// Streaming programs that ended by themselves (crashed, exited, closed stdout).
    pub fn exits(&self) -> u64 {
        self.exits.load(Ordering::Relaxed)
    }
    /// Lines of standard output that were not protocol 1, skipped.
    pub fn invalid_lines(&self) -> u64 {
        self.invalid_lines.load(Ordering::Relaxed)
    }
    /// Poll runs stopped because they took longer than `timeout`.
    pub fn timeouts(&self) -> u64 {
        self.timeouts.load(Ordering::Relaxed)
    }
    /// The back-off wait chosen before the last restart of a streaming program.
    pub fn last_restart_delay(&self) -> Duration {
        Duration::from_micros(self.last_restart_delay_us.load(Ordering::Relaxed))
    }
    /// The pid of the program running now, if one is.
    pub fn pid(&self) -> Option<i32> {
        Some(self.pid.load(Ordering::Relaxed)).filter(|p| *p > 0)
    }
}

/// An exec device, built from a checked [`ExecConfig`].
#[derive(Debug)]
pub struct ExecAdapter {
    config: ExecConfig,
    poll_interval: Duration,
    stats: Arc<Stats>,
    bad: BadLines,
}

impl ExecAdapter {
    pub fn new(spec: &DeviceSpec, config: ExecConfig) -> ExecAdapter {
        ExecAdapter {
            config,
            poll_interval: spec.poll_interval,
            stats: Arc::default(),
            bad: BadLines::default(),
        }
    }

    /// The device's counters, live.
    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    fn spawn(&self, ctx: &AdapterContext) -> std::io::Result<Running> {
        let run = child::spawn(&self.config, &ctx.device, ctx.poll_interval)?;
        self.stats.starts.fetch_add(1, Ordering::Relaxed);
        self.stats.pid.store(run.pid, Ordering::Relaxed);
        Ok(run)
    }

    /// Turn one line into readings of this device; a bad line is counted. `None` for a
    /// line with no reading.
    fn readings(&mut self, device: &str, line: Line) -> Option<Vec<Reading>> {
        let now = SystemTime::now();
        let parsed = match &line {
            Line::Text(t) => parse_line(t, now),
            Line::TooLong(n) => Err(LineError::TooLong(*n)),
            Line::NotUtf8 => Err(LineError::NotUtf8),
        };
        match parsed {
            Ok(rs) if rs.is_empty() => None,
            Ok(rs) => Some(rs.into_iter().map(|r| reading(device, r)).collect()),
            Err(e) => {
                let text = match &line {
                    Line::Text(t) => t.as_str(),
                    _ => "",
                };
                self.bad.record(&self.stats, device, &e, text);
                None
            }
        }
    }

    /// Stream mode: keep the program running, restart it with back-off when it ends.
    async fn stream(&mut self, ctx: &mut AdapterContext) -> Result<(), AdapterError> {
        let mut backoff = Backoff::new(self.config.restart_delay, MAX_RESTART_DELAY);
        let cmd = self.config.command_line();
        let mut commands_open = true;
        loop {
            if ctx.cancel.is_cancelled() {
                return Ok(());
            }
            let started = Instant::now();
            let why = match self.spawn(ctx) {
                Err(e) => format!("cannot start `{cmd}`: {}", start_error(&e)),
                Ok(mut run) => {
                    log::info!("device {}: started `{cmd}` (pid {})", ctx.device, run.pid);
                    let end = match ctx.set_online(true).await {
                        Ok(()) => self.follow(ctx, &mut run, &mut commands_open).await,
                        Err(_) => End::DaemonGone,
                    };
                    let status = match end {
                        End::Exited(status) => status,
                        End::Cancelled | End::DaemonGone | End::StdoutClosed => {
                            run.stop(self.config.stop_timeout).await
                        }
                    };
                    run.finish_stderr().await;
                    self.stats.pid.store(0, Ordering::Relaxed);
                    self.bad.flush(&ctx.device);
                    match end {
                        End::Cancelled => {
                            log::info!(
                                "device {}: `{cmd}` {} on shutdown",
                                ctx.device,
                                describe_exit(status)
                            );
                            return Ok(());
                        }
                        End::DaemonGone => return Err(AdapterError::Cancelled),
                        End::Exited(_) | End::StdoutClosed => {}
                    }
                    self.stats.exits.fetch_add(1, Ordering::Relaxed);
                    if started.elapsed() >= HEALTHY_AFTER {
                        backoff.reset();
                    }
                    let mut why = if matches!(end, End::StdoutClosed) {
                        format!(
                            "`{cmd}` closed its standard output and was stopped ({})",
                            describe_exit(status)
                        )
                    } else {
                        format!("`{cmd}` {}", describe_exit(status))
                    };
                    if let Some(last) = run.last_stderr() {
                        why.push_str(&format!(" (last on stderr: {last})"));
                    }
                    why
                }
            };
            let delay = backoff.next_delay();
            self.stats
                .last_restart_delay_us
                .store(delay.as_micros() as u64, Ordering::Relaxed);
            log::warn!(
                "device {} offline: {why}; starting it again in {}",
                ctx.device,
                humantime::format_duration(Duration::from_millis(delay.as_millis() as u64))
            );
            ctx.set_online(false).await?;
            if ctx.sleep(delay).await.is_err() {
                return Ok(());
            }
        }
    }

    /// Read a streaming program's lines until it ends or the daemon stops.
    async fn follow(
        &mut self,
        ctx: &mut AdapterContext,
        run: &mut Running,
        commands_open: &mut bool,
    ) -> End {
        loop {
            tokio::select! {
                // Lines before the exit: an exit is only taken once its output is read.
                biased;
                _ = ctx.cancel.cancelled() => return End::Cancelled,
                cmd = ctx.commands.recv(), if *commands_open => match cmd {
                    None => *commands_open = false,
                    Some(cmd) => log::warn!(
                        "device {}: write to point {:?} refused: an exec device is not writable",
                        ctx.device, cmd.point
                    ),
                },
                line = run.stdout.next() => match line {
                    Ok(Some(line)) => {
                        if let Some(rs) = self.readings(&ctx.device, line) {
                            if ctx.publish(rs).await.is_err() {
                                return End::DaemonGone;
                            }
                        }
                    }
                    Ok(None) | Err(_) => {
                        // Usually the program is ending; give it a moment to say so.
                        return tokio::select! {
                            _ = ctx.cancel.cancelled() => End::Cancelled,
                            status = tokio::time::timeout(EXIT_AFTER_EOF, run.child.wait()) => {
                                match status {
                                    Ok(status) => {
                                        run.kill_leftovers();
                                        End::Exited(status.ok())
                                    }
                                    Err(_) => End::StdoutClosed,
                                }
                            }
                        };
                    }
                },
                status = run.child.wait() => {
                    // The lines it printed before it ended are still in the pipe. Its
                    // leftover helpers go first, so that the pipe reaches its end.
                    run.kill_leftovers();
                    // Each read is bounded (a process that left the group may hold the
                    // pipe open), not the whole: publishing may take its time.
                    while let Ok(Ok(Some(line))) =
                        tokio::time::timeout(DRAIN_IDLE, run.stdout.next()).await
                    {
                        if let Some(rs) = self.readings(&ctx.device, line) {
                            if ctx.publish(rs).await.is_err() {
                                return End::DaemonGone;
                            }
                        }
                    }
                    return End::Exited(status.ok());
                }
            }
        }
    }
}

/// How a streaming program's run ended.
#[derive(Debug)]
enum End {
    /// The daemon stops.
    Cancelled,
    /// The daemon stopped taking readings.
    DaemonGone,
    /// The program exited by itself (reaped).
    Exited(Option<std::process::ExitStatus>),
    /// It closed its standard output but kept running.
    StdoutClosed,
}

/// Why a program could not start, with a hint for the usual mistakes.
fn start_error(e: &std::io::Error) -> String {
    let hint = match e.raw_os_error() {
        Some(libc::ENOEXEC) => {
            "; a script needs a `#!` first line, or name its interpreter: \
             command = [\"sh\", \"script.sh\"]"
        }
        Some(libc::EACCES) => {
            "; is it executable (chmod +x)? Or name its interpreter: \
             command = [\"python3\", \"script.py\"]"
        }
        Some(libc::ENOENT) => "; use an absolute path, or a program in the daemon's PATH",
        _ => "",
    };
    format!("{e}{hint}")
}

fn reading(device: &str, r: LineReading) -> Reading {
    Reading::new(device.into(), r.point, r.value)
        .with_unit(r.unit)
        .with_ts(r.ts)
}

#[sensorgate_api::async_trait]
impl Adapter for ExecAdapter {
    fn points(&self) -> Vec<PointInfo> {
        // The program names its points as it prints them.
        Vec::new()
    }

    fn describe(&self) -> Vec<String> {
        let c = &self.config;
        let mut lines = vec![format!("command: {}", c.command_line())];
        if let Some(dir) = &c.working_dir {
            lines.push(format!("working_dir: {}", dir.display()));
        }
        lines.push(match c.mode {
            Mode::Stream => format!(
                "mode: stream; restarted after it ends, from {} up to {} apart",
                humantime::format_duration(c.restart_delay),
                humantime::format_duration(MAX_RESTART_DELAY)
            ),
            Mode::Poll => format!(
                "mode: poll; one run every {}, each stopped after {}",
                humantime::format_duration(self.poll_interval),
                humantime::format_duration(c.timeout)
            ),
        });
        lines.push("points: named by the program's output".to_string());
        lines
    }

    async fn run(&mut self, ctx: &mut AdapterContext) -> Result<(), AdapterError> {
        match self.config.mode {
            Mode::Stream => self.stream(ctx).await,
            Mode::Poll => run_poller(self, ctx).await,
        }
    }
}

#[sensorgate_api::async_trait]
impl Poller for ExecAdapter {
    /// One run: start the program, read its lines until it exits (or `timeout`), and
    /// hand over every reading it printed as one batch.
    async fn poll(&mut self, ctx: &AdapterContext) -> Result<Vec<Reading>, AdapterError> {
        let cmd = self.config.command_line();
        let mut run = self.spawn(ctx).map_err(|e| {
            AdapterError::Transport(format!("cannot start `{cmd}`: {}", start_error(&e)))
        })?;
        let deadline = Instant::now() + self.config.timeout;
        let mut readings = Vec::new();
        let mut timed_out = false;
        let mut cancelled = false;
        let mut status = None;
        // Its output, to the end.
        loop {
            tokio::select! {
                _ = ctx.cancel.cancelled() => { cancelled = true; break; }
                _ = tokio::time::sleep_until(deadline) => { timed_out = true; break; }
                line = run.stdout.next() => match line {
                    Ok(Some(line)) => {
                        if let Some(rs) = self.readings(&ctx.device, line) {
                            if readings.len() + rs.len() > MAX_RUN_READINGS {
                                self.bad.record(
                                    &self.stats,
                                    &ctx.device,
                                    &format_args!("more than {MAX_RUN_READINGS} readings in one run"),
                                    "",
                                );
                            } else {
                                readings.extend(rs);
                            }
                        }
                    }
                    Ok(None) | Err(_) => break,
                },
            }
        }
        // Its exit.
        if !timed_out && !cancelled {
            tokio::select! {
                _ = ctx.cancel.cancelled() => cancelled = true,
                _ = tokio::time::sleep_until(deadline) => timed_out = true,
                s = run.child.wait() => {
                    status = s.ok();
                    run.kill_leftovers();
                }
            }
        }
        if timed_out || cancelled {
            status = run.stop(self.config.stop_timeout).await;
        }
        run.finish_stderr().await;
        self.stats.pid.store(0, Ordering::Relaxed);
        if cancelled {
            self.bad.flush(&ctx.device);
            return Err(AdapterError::Cancelled);
        }
        let why = if timed_out {
            self.stats.timeouts.fetch_add(1, Ordering::Relaxed);
            format!(
                "`{cmd}` did not finish within {} and was stopped ({})",
                humantime::format_duration(self.config.timeout),
                describe_exit(status)
            )
        } else if status.is_some_and(|s| s.success()) {
            return Ok(readings);
        } else {
            format!("`{cmd}` {}", describe_exit(status))
        };
        let why = match run.last_stderr() {
            Some(last) => format!("{why} (last on stderr: {last})"),
            None => why,
        };
        if readings.is_empty() {
            Err(AdapterError::Transport(why))
        } else {
            log::warn!(
                "device {}: {why}; publishing the {} readings it printed",
                ctx.device,
                readings.len()
            );
            Ok(readings)
        }
    }
}

/// Bad lines: every one counted, a warning at most once per [`BAD_LINE_REPORT`].
#[derive(Debug, Default)]
struct BadLines {
    /// Bad lines since the last warning.
    unreported: u64,
    last_warn: Option<Instant>,
}

impl BadLines {
    fn record(&mut self, stats: &Stats, device: &str, why: &dyn Display, line: &str) {
        stats.invalid_lines.fetch_add(1, Ordering::Relaxed);
        self.unreported += 1;
        let line = if line.is_empty() {
            String::new()
        } else {
            format!(": {}", excerpt(line, 120))
        };
        if self
            .last_warn
            .is_none_or(|t| t.elapsed() >= BAD_LINE_REPORT)
        {
            log::warn!(
                "device {device}: skipped {} line(s) of output that are not exec protocol 1 \
                 in the last {}; the last one: {why}{line}",
                self.unreported,
                humantime::format_duration(BAD_LINE_REPORT)
            );
            self.unreported = 0;
            self.last_warn = Some(Instant::now());
        } else {
            log::debug!("device {device}: skipped a line: {why}{line}");
        }
    }

    /// The program ended: say how many bad lines went unreported since the last warning.
    fn flush(&mut self, device: &str) {
        if self.unreported > 0 {
            log::warn!(
                "device {device}: skipped {} more line(s) of output that are not exec \
                 protocol 1",
                self.unreported
            );
            self.unreported = 0;
        }
    }
}
