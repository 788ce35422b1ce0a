//! Helpers shared by the tests: a device spec from TOML, and a run of an adapter against
//! a real events channel whose other end plays the daemon.

#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sensorgate_api::{
    Adapter, AdapterContext, AdapterError, CancellationToken, DeviceEvent, DeviceSpec, Reading,
};
use tokio::sync::mpsc;
use tokio::time::timeout;

/// Every wait in the tests is bounded by this.
pub const WAIT: Duration = Duration::from_secs(10);

/// A spec for device `name` with the plugin keys in `table` (TOML source).
pub fn spec(name: &str, table: &str, state_dir: &Path) -> DeviceSpec {
    DeviceSpec {
        name: name.into(),
        plugin: "sim".into(),
        poll_interval: Duration::from_millis(20),
        state_dir: state_dir.to_path_buf(),
        table: toml::from_str(table).expect("test TOML parses"),
    }
}

/// What the fake daemon does with a batch of readings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Ack {
    /// Take them over: send `()` on the ack.
    Yes,
    /// Drop the ack: the adapter must see the daemon as gone.
    No,
}

/// What came of one run.
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
    /// The values of `point` that the daemon took over, in order.
    pub fn acked(&self, point: &str) -> Vec<Reading> {
        self.batches
            .iter()
            .filter(|(_, ack)| *ack == Ack::Yes)
            .flat_map(|(b, _)| b.iter().filter(|r| &*r.point == point).cloned())
            .collect()
    }
}

/// Run `adapter` with a 20 ms poll interval on `state_dir`. A task plays the daemon: it
/// answers batch `i` with `ack(i)` and cancels the run once `batches` batches came (or
/// at the first one it does not acknowledge). It keeps draining until the context is
/// dropped, so a poll that slips in after the cancel is still answered.
pub async fn run(
    adapter: &mut dyn Adapter,
    device: &str,
    state_dir: &Path,
    batches: usize,
    ack: impl Fn(usize) -> Ack + Send + 'static,
) -> Run {
    let (events_tx, mut events_rx) = mpsc::channel(16);
    // Kept open for the whole run: a closed command channel stops the poll loop.
    let (commands_tx, commands_rx) = mpsc::channel(1);
    let cancel = CancellationToken::new();
    let mut ctx = AdapterContext::new(
        Arc::from(device),
        Duration::from_millis(20),
        state_dir.to_path_buf(),
        cancel.clone(),
        events_tx,
        commands_rx,
    );
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
