//! The `onewire` plugin of sensorgate: DS18B20-style 1-wire temperature sensors, read
//! from the Linux w1 sysfs (`/sys/bus/w1/devices/28-…/w1_slave`).
//!
//! With no points listed, every temperature sensor found under `root` is a point named by
//! its id, looked for again at every poll; listed points read only their sensors, under
//! names of their own. A CRC failure, the 85 °C power-on value, an unreadable or missing
//! sensor and a read that times out are bad readings: counted, warned about (rate
//! limited), never published as values. Keys, bad readings and how to enable 1-wire on a
//! Pi: `plugins/onewire/README.md`; an example: `plugins/onewire/sample.toml`.
//!
//! # Layout
//! - [`config`]: the device's keys ([`OnewireConfig`]), parsed and checked, every error
//!   with its key path.
//! - [`sensor`]: a sensor's id and its files: `w1_slave` and `temperature` parsed, the
//!   blocking read, the scan of the root.
//! - [`adapter`]: [`OnewireAdapter`], the poll that reads all sensors at once, keeps bad
//!   readings out and says when the device is offline.

pub mod adapter;
pub mod config;
pub mod sensor;

use sensorgate_api::{Adapter, ConfigError, DeviceSpec, Plugin};

pub use adapter::OnewireAdapter;
pub use config::OnewireConfig;

/// The plugin, for the daemon's plugin list: `plugin = "onewire"`.
pub static PLUGIN: OnewirePlugin = OnewirePlugin;

/// Builds [`OnewireAdapter`]s from `[[device]]` tables with `plugin = "onewire"`.
#[derive(Debug, Clone, Copy, Default)]
pub struct OnewirePlugin;

impl Plugin for OnewirePlugin {
    fn name(&self) -> &'static str {
        "onewire"
    }

    fn build(&self, spec: &DeviceSpec) -> Result<Box<dyn Adapter>, Vec<ConfigError>> {
        let config = OnewireConfig::from_spec(spec)?;
        Ok(Box::new(OnewireAdapter::new(config)))
    }
}
