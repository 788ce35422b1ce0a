//! The `exec` plugin of sensorgate: a sensor as a program in any language that prints
//! one JSON object a line (protocol 1, `PROTOCOL.md`).
//!
//! In `mode = "stream"` (the default) the program runs all the time and is restarted with
//! back-off when it ends; in `mode = "poll"` it is started once per `poll_interval` and
//! must exit within `timeout`. Every program runs in its own process group and is stopped
//! with SIGTERM, a grace period, then SIGKILL, and always reaped. Keys, modes and logging:
//! `plugins/exec/README.md`; an example device: `plugins/exec/sample.toml`.
//!
//! # Layout
//! - [`config`]: the device's keys ([`ExecConfig`]), every error with its key path.
//! - [`protocol`]: protocol 1, a line to readings; the level of a standard-error line.
//! - [`lines`]: lines from a pipe, bounded in length.
//! - `child`: starting the program (process group, environment), logging its standard
//!   error, stopping and reaping it.
//! - [`adapter`]: [`ExecAdapter`], the stream loop with restarts and the poll run.

pub mod adapter;
mod child;
pub mod config;
pub mod lines;
pub mod protocol;

use sensorgate_api::{Adapter, ConfigError, DeviceSpec, Plugin};

pub use adapter::{ExecAdapter, Stats};
pub use config::{ExecConfig, Mode};

/// The plugin, for the daemon's plugin list: `plugin = "exec"`.
pub static PLUGIN: ExecPlugin = ExecPlugin;

/// Builds [`ExecAdapter`]s from `[[device]]` tables with `plugin = "exec"`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ExecPlugin;

impl ExecPlugin {
    /// The adapter itself, not boxed, so that a test can keep its [`Stats`].
    pub fn build_exec(&self, spec: &DeviceSpec) -> Result<ExecAdapter, Vec<ConfigError>> {
        let config = ExecConfig::from_spec(spec)?;
        Ok(ExecAdapter::new(spec, config))
    }
}

impl Plugin for ExecPlugin {
    fn name(&self) -> &'static str {
        "exec"
    }

    fn build(&self, spec: &DeviceSpec) -> Result<Box<dyn Adapter>, Vec<ConfigError>> {
        Ok(Box::new(self.build_exec(spec)?))
    }
}
