//! The `sim` plugin of sensorgate: simulated devices that need no hardware.
//!
//! A sim device is the demo of the default config and a test source: each point is a
//! `sine` wave of the clock, a `random` value between `min` and `max`, a `constant`, or a
//! `counter` (0, 1, 2, … one step per poll) that resumes after restarts, so that a lost or
//! repeated message can be seen end to end. Keys, defaults and an example:
//! `plugins/sim/README.md` and `plugins/sim/sample.toml`.
//!
//! # Layout
//! - [`config`]: the device's keys ([`SimConfig`]), parsed and checked, every error with
//!   its key path.
//! - [`adapter`]: [`SimAdapter`], the poll that computes one reading per point.
//! - `counters`: the counters' state file, `counters.json` in the device's state folder,
//!   written atomically after the daemon took a poll's readings over.

pub mod adapter;
pub mod config;
mod counters;

use sensorgate_api::{Adapter, ConfigError, DeviceSpec, Plugin};

pub use adapter::SimAdapter;
pub use config::SimConfig;

/// The plugin, for the daemon's plugin list: `plugin = "sim"`.
pub static PLUGIN: SimPlugin = SimPlugin;

/// Builds [`SimAdapter`]s from `[[device]]` tables with `plugin = "sim"`.
#[derive(Debug, Clone, Copy, Default)]
pub struct SimPlugin;

impl Plugin for SimPlugin {
    fn name(&self) -> &'static str {
        "sim"
    }

    fn build(&self, spec: &DeviceSpec) -> Result<Box<dyn Adapter>, Vec<ConfigError>> {
        let config = SimConfig::from_spec(spec)?;
        Ok(Box::new(SimAdapter::new(spec, config)))
    }
}
