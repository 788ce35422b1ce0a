//! The plugin API of sensorgate: everything a device plugin needs, and nothing else.
//!
//! A plugin turns a `[[device]]` table of the configuration into a running [`Adapter`];
//! the adapter talks to its device and hands [`Reading`]s to the daemon through its
//! [`AdapterContext`]. The daemon does the rest (topics, JSON, the broker, the buffer).
//!
//! # Layout
//! - [`reading`]: [`Reading`], [`Value`], [`Quality`]: what a device produces.
//! - [`adapter`]: the [`Plugin`] factory and [`Adapter`] traits, [`AdapterContext`],
//!   [`Command`] (a write from MQTT), [`DeviceEvent`] (what flows to the publisher).
//! - [`poll`]: [`Poller`] and [`run_poller`], the poll loop with back-off most plugins use;
//!   [`Backoff`] on its own.
//! - [`config`]: [`DeviceSpec`] (a device's table), [`ConfigError`] with its key path,
//!   and serde helpers for human durations (`"500ms"`, `"5s"`).
//! - [`error`]: [`AdapterError`], keeping device problems apart from transport problems.
//! - `testing` (feature `testing`): a fake daemon for plugin tests.

pub mod adapter;
pub mod config;
pub mod error;
pub mod poll;
pub mod reading;
#[cfg(feature = "testing")]
pub mod testing;

pub use adapter::{Adapter, AdapterContext, Command, DeviceEvent, Plugin, PointInfo};
pub use config::{ConfigError, DeviceSpec};
pub use error::AdapterError;
pub use poll::{run_poller, Backoff, Poller};
pub use reading::{format_ts, Quality, Reading, Value};

/// Re-exported so plugins name the same versions as the daemon.
pub use async_trait::async_trait;
pub use tokio_util::sync::CancellationToken;
