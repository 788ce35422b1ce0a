//! Test support for plugin crates (feature `testing`): a device spec from TOML, and runs
//! of an adapter against a real events channel whose other end plays the daemon.
//!
//! Two shapes: [`run`] drives an adapter to a given number of batches and returns what
//! came (poll plugins); [`start`] spawns it and hands back a [`Running`] device whose
//! events a test reads as they come (stream plugins: a line written, a reading expected).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

use crate::adapter::{Adapter, AdapterContext, Command, DeviceEvent, Plugin};
use crate::config::{ConfigError, DeviceSpec};
use crate::error::AdapterError;
use crate::reading::Reading;

/// Every wait in these helpers is bounded by this.
pub const WAIT: Duration = Duration::from_secs(10);

/// The poll interval of specs made by [`spec`] and contexts made here.
pub const POLL: Duration = Duration::from_millis(20);

/// A spec for device `name` of `plugin` with the plugin keys in `table` (TOML source),
/// polled every [`POLL`].
///
/// # Panics
/// When `table` is not TOML: a mistake in the test itself.
pub fn spec(plugin: &str, name: &str, table: &str, state_dir: &Path) -> DeviceSpec {
    DeviceSpec {
        name: name.into(),
        plugin: plugin.into(),
        poll_interval: POLL,
        state_dir: state_dir.to_path_buf(),
        table: toml::from_str(table).expect("test TOML parses"),
    }
}

/// The errors of building device `d` of `plugin` from `table` (TOML source).
///
/// # Panics
/// When the device builds: the test expected errors.
pub fn build_errors(plugin: &dyn Plugin, table: &str) -> Vec<ConfigError> {
    let state_dir = std::env::temp_dir().join("sensorgate-build-errors");
    match plugin.build(&spec(plugin.name(), "d", table, &state_dir)) {
        Ok(_) => panic!("built, but should not have:\n{table}"),
        Err(e) => e,
    }
}

/// The single error of building `table` (see [`build_errors`]).
///
/// # Panics
/// When the device builds, or gives more than one error.
pub fn build_error(plugin: &dyn Plugin, table: &str) -> ConfigError {
    let mut e = build_errors(plugin, table);
    assert_eq!(e.len(), 1, "expected one error, got {e:?}");
    e.remove(0)
}

/// What the fake daemon does with a batch of readings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ack {
    /// Take them over: send `()` on the ack.
    Yes,
    /// Drop the ack: the adapter must see the daemon as gone.
    No,
}

/// What came of one [`run`].
#[derive(Debug)]
pub struct Run {
    /// The batches of readings, in order, with whether each was acknowledged.
    pub batches: Vec<(Vec<Reading>, Ack)>,
    /// The availability changes, in order.
    pub availability: Vec<bool>,
    /// What `Adapter::run` returned.
    pub result: Result<(), AdapterError>,
}

impl Run {
    /// The readings of `point` that the daemon took over, in order.
    pub fn acked(&self, point: &str) -> Vec<Reading> {
        self.batches
            .iter()
            .filter(|(_, ack)| *ack == Ack::Yes)
            .flat_map(|(b, _)| b.iter().filter(|r| &*r.point == point).cloned())
            .collect()
    }
}

/// A context for `device` as the daemon makes one, with the other ends of its channels.
fn context(
    device: &str,
    state_dir: &Path,
    events: usize,
) -> (
    AdapterContext,
    mpsc::Receiver<DeviceEvent>,
    mpsc::Sender<Command>,
    CancellationToken,
) {
    let (events_tx, events_rx) = mpsc::channel(events);
    let (commands_tx, commands_rx) = mpsc::channel(16);
    let cancel = CancellationToken::new();
    let ctx = AdapterContext::new(
        Arc::from(device),
        POLL,
        state_dir.to_path_buf(),
        cancel.clone(),
        events_tx,
        commands_rx,
    );
    (ctx, events_rx, commands_tx, cancel)
}

/// Run `adapter` with a [`POLL`] interval on `state_dir`. A task plays the daemon: it
/// answers batch `i` with `ack(i)` and cancels the run once `batches` batches came (or
/// at the first one it does not acknowledge). It keeps draining until the context is
/// dropped, so a poll that slips in after the cancel is still answered.
///
/// # Panics
/// When the adapter does not return within [`WAIT`] of the cancel.
pub async fn run(
    adapter: &mut dyn Adapter,
    device: &str,
    state_dir: &Path,
    batches: usize,
    ack: impl Fn(usize) -> Ack + Send + 'static,
) -> Run {
    // `commands_tx` is kept open for the whole run: a closed command channel stops the
    // poll loop.
    let (mut ctx, mut events_rx, commands_tx, cancel) = context(device, state_dir, 16);
    let daemon = tokio::spawn(async move {
        let mut got = Vec::new();
        let mut availability = Vec::new();
        while let Some(event) = events_rx.recv().await {
            match event {
                DeviceEvent::Readings { readings, ack: tx } => {
                    let answer = ack(got.len());
                    if let (Ack::Yes, Some(tx)) = (answer, tx) {
                        let _ = tx.send(());
                    }
                    got.push((readings, answer));
                    if answer == Ack::No || got.len() >= batches {
                        cancel.cancel();
                    }
                }
                DeviceEvent::Availability { online, .. } => availability.push(online),
            }
        }
        (got, availability)
    });
    let result = timeout(WAIT, adapter.run(&mut ctx))
        .await
        .expect("run returns after the cancel");
    drop(ctx);
    drop(commands_tx);
    let (batches, availability) = timeout(WAIT, daemon)
        .await
        .expect("the fake daemon ends when the context is gone")
        .expect("the fake daemon does not panic");
    Run {
        batches,
        availability,
        result,
    }
}

/// What a [`Running`] device said, one event at a time.
#[derive(Debug)]
pub enum Event {
    Readings(Vec<Reading>),
    Availability(bool),
}

/// An adapter running in its own task, as the daemon runs it; see [`start`].
pub struct Running {
    events: mpsc::Receiver<DeviceEvent>,
    /// Writes for the device, as `/set` messages would bring them.
    pub commands: mpsc::Sender<Command>,
    /// Cancels the run, as a shutdown does.
    pub cancel: CancellationToken,
    task: JoinHandle<Result<(), AdapterError>>,
}

/// Spawn `adapter` on device `device` with a [`POLL`] interval on `state_dir`. Every
/// batch of readings is acknowledged as soon as it is read with [`Running::next`].
pub fn start(mut adapter: Box<dyn Adapter>, device: &str, state_dir: &Path) -> Running {
    let (mut ctx, events, commands, cancel) = context(device, state_dir, 64);
    let task = tokio::spawn(async move { adapter.run(&mut ctx).await });
    Running {
        events,
        commands,
        cancel,
        task,
    }
}

impl Running {
    /// The next event, its readings acknowledged; `None` when the adapter has ended or
    /// nothing came within `wait`.
    pub async fn next(&mut self, wait: Duration) -> Option<Event> {
        match timeout(wait, self.events.recv()).await {
            Ok(Some(DeviceEvent::Readings { readings, ack })) => {
                if let Some(ack) = ack {
                    let _ = ack.send(());
                }
                Some(Event::Readings(readings))
            }
            Ok(Some(DeviceEvent::Availability { online, .. })) => Some(Event::Availability(online)),
            Ok(None) | Err(_) => None,
        }
    }

    /// Readings until one batch holds `point`, within `wait`: that batch. Availability
    /// changes on the way are skipped.
    pub async fn readings_with(&mut self, point: &str, wait: Duration) -> Option<Vec<Reading>> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await? {
                Event::Readings(r) if r.iter().any(|r| &*r.point == point) => return Some(r),
                _ => {}
            }
        }
    }

    /// The next availability change within `wait`; readings on the way are acknowledged
    /// and skipped.
    pub async fn availability(&mut self, wait: Duration) -> Option<bool> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if let Event::Availability(online) = self.next(left).await? {
                return Some(online);
            }
        }
    }

    /// Cancel the run and wait for `Adapter::run` to return, answering readings meanwhile.
    ///
    /// # Panics
    /// When the adapter does not return within [`WAIT`], or its task panicked.
    pub async fn stop(mut self) -> Result<(), AdapterError> {
        self.cancel.cancel();
        let mut task = self.task;
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            tokio::select! {
                done = &mut task => return done.expect("the adapter task does not panic"),
                event = self.events.recv() => match event {
                    Some(DeviceEvent::Readings { ack: Some(ack), .. }) => {
                        let _ = ack.send(());
                    }
                    Some(_) => {}
                    None => break,
                },
                _ = tokio::time::sleep_until(deadline) => panic!("run did not return after the cancel"),
            }
        }
        timeout(WAIT, task)
            .await
            .expect("run returns after the cancel")
            .expect("the adapter task does not panic")
    }
}
