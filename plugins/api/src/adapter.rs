//! The two traits a plugin implements, and the context a running adapter works in.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::config::{ConfigError, DeviceSpec};
use crate::error::AdapterError;
use crate::reading::{Reading, Value};

/// A kind of device (`plugin = "sim"`): turns a device's config into an [`Adapter`].
/// One static instance per plugin sits in the daemon's plugin list.
pub trait Plugin: Send + Sync + 'static {
    /// The name used in `plugin = "…"`.
    fn name(&self) -> &'static str;

    /// Parse and check the device's keys; return every problem found, not just the first.
    fn build(&self, spec: &DeviceSpec) -> Result<Box<dyn Adapter>, Vec<ConfigError>>;
}

/// What `sensorgate check` prints about a point.
#[derive(Debug, Clone, PartialEq)]
pub struct PointInfo {
    pub name: String,
    pub unit: Option<String>,
    pub writable: bool,
    /// Home Assistant `device_class` (`temperature`, …), when the point's config sets one.
    pub device_class: Option<String>,
    /// Home Assistant `state_class` (`measurement`, …), when the point's config sets one.
    pub state_class: Option<String>,
    /// One line for people: where the value comes from (`sine 18..24 over 60s`).
    pub source: String,
}

/// One running device. Built by [`Plugin::build`], then run until cancelled.
#[async_trait::async_trait]
pub trait Adapter: Send {
    /// The points this device will publish (as far as the config knows them).
    fn points(&self) -> Vec<PointInfo>;

    /// Extra lines for `sensorgate check` (a Modbus read plan, say).
    fn describe(&self) -> Vec<String> {
        Vec::new()
    }

    /// Talk to the device until `ctx.cancel` fires, then return `Ok(())`. Returning an
    /// error makes the daemon mark the device offline and build and run it again after
    /// a back-off; the rest of the gateway keeps running.
    async fn run(&mut self, ctx: &mut AdapterContext) -> Result<(), AdapterError>;
}

/// A write asked for over MQTT: `<prefix>/<device>/<point>/set`.
#[derive(Debug)]
pub struct Command {
    pub point: String,
    /// The payload, as JSON (a bare number or word is taken as a JSON value or string).
    pub value: serde_json::Value,
}

/// What an adapter tells the daemon. Plugins do not build these; the context does.
#[derive(Debug)]
pub enum DeviceEvent {
    /// A batch of readings; `ack` fires once the daemon has taken them over (published,
    /// or committed to the buffer), so an adapter can persist its own progress after it.
    Readings {
        readings: Vec<Reading>,
        ack: Option<oneshot::Sender<()>>,
    },
    /// The device came online or went offline.
    Availability { device: Arc<str>, online: bool },
}

/// The channel a plugin's readings and availability go out on has closed: the daemon is
/// shutting down.
#[derive(Debug, thiserror::Error)]
#[error("the daemon stopped taking readings")]
pub struct Closed;

impl From<Closed> for AdapterError {
    fn from(_: Closed) -> Self {
        AdapterError::Cancelled
    }
}

/// Everything a running adapter may use.
pub struct AdapterContext {
    /// The device's name (the topic segment).
    pub device: Arc<str>,
    /// The device's `poll_interval`.
    pub poll_interval: Duration,
    /// A folder only this device uses, kept across restarts (`<state_dir>/devices/<name>`).
    pub state_dir: PathBuf,
    /// Fires once when the daemon stops; every loop selects on it.
    pub cancel: CancellationToken,
    /// Writes from MQTT for this device. Stays open across an adapter restart.
    pub commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<DeviceEvent>,
    online: Option<bool>,
}

impl AdapterContext {
    pub fn new(
        device: Arc<str>,
        poll_interval: Duration,
        state_dir: PathBuf,
        cancel: CancellationToken,
        events: mpsc::Sender<DeviceEvent>,
        commands: mpsc::Receiver<Command>,
    ) -> AdapterContext {
        AdapterContext {
            device,
            poll_interval,
            state_dir,
            cancel,
            commands,
            events,
            online: None,
        }
    }

    /// A good reading of `point` of this device, taken now.
    pub fn reading(&self, point: impl Into<Arc<str>>, value: Value) -> Reading {
        Reading::new(self.device.clone(), point.into(), value)
    }

    /// Hand readings over and wait until the daemon has taken them (published, or
    /// committed to the buffer). Marks the device online first if it was not.
    pub async fn publish(&mut self, readings: Vec<Reading>) -> Result<(), Closed> {
        self.set_online(true).await?;
        if readings.is_empty() {
            return Ok(());
        }
        let (tx, rx) = oneshot::channel();
        self.events
            .send(DeviceEvent::Readings {
                readings,
                ack: Some(tx),
            })
            .await
            .map_err(|_| Closed)?;
        rx.await.map_err(|_| Closed)
    }

    /// Say that the device is reachable or not; repeated calls with the same state are
    /// free (only a change is published).
    pub async fn set_online(&mut self, online: bool) -> Result<(), Closed> {
        if self.online == Some(online) {
            return Ok(());
        }
        self.events
            .send(DeviceEvent::Availability {
                device: self.device.clone(),
                online,
            })
            .await
            .map_err(|_| Closed)?;
        self.online = Some(online);
        Ok(())
    }

    /// The state last told with [`set_online`](Self::set_online).
    pub fn is_online(&self) -> Option<bool> {
        self.online
    }

    /// Sleep, unless the daemon stops first (then `Err(Cancelled)`).
    pub async fn sleep(&self, d: Duration) -> Result<(), AdapterError> {
        tokio::select! {
            _ = self.cancel.cancelled() => Err(AdapterError::Cancelled),
            _ = tokio::time::sleep(d) => Ok(()),
        }
    }
}
