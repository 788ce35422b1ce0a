//! The `serial` plugin of sensorgate: line-oriented devices on a serial port (a weather
//! station on a USB adapter, an Arduino printing readings).
//!
//! Each line the device prints is parsed by the device's `format` (`json`, `kv`, `csv`
//! or `regex`) and becomes one batch of readings, its keys the points. A device that
//! only answers when asked gets its query (`send`) every `poll_interval`. A port that
//! goes away makes the device `offline`; it is reopened with back-off when it comes back.
//! Keys, defaults and examples: `plugins/serial/README.md` and `plugins/serial/sample.toml`.
//!
//! # Layout
//! - [`config`]: the device's keys ([`SerialConfig`]), parsed and checked, every error
//!   with its key path.
//! - [`parse`]: no I/O: [`parse::Framer`] cuts bytes into lines (delimiter, length
//!   bound), [`parse::Decoder`] turns a line into readings by the format.
//! - [`adapter`]: [`SerialAdapter`], the port, the read loop, the query timer, the
//!   reopen with back-off, and its counters ([`adapter::Stats`]).

pub mod adapter;
pub mod config;
pub mod parse;

use sensorgate_api::{Adapter, ConfigError, DeviceSpec, Plugin};

pub use adapter::SerialAdapter;
pub use config::SerialConfig;

/// The plugin, for the daemon's plugin list: `plugin = "serial"`.
pub static PLUGIN: SerialPlugin = SerialPlugin;

/// Builds [`SerialAdapter`]s from `[[device]]` tables with `plugin = "serial"`.
#[derive(Debug, Clone, Copy, Default)]
pub struct SerialPlugin;

impl Plugin for SerialPlugin {
    fn name(&self) -> &'static str {
        "serial"
    }

    fn build(&self, spec: &DeviceSpec) -> Result<Box<dyn Adapter>, Vec<ConfigError>> {
        Ok(Box::new(SerialAdapter::from_spec(spec)?))
    }
}
