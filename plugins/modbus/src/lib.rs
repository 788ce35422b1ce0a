//! The `modbus` plugin of sensorgate: Modbus TCP, RTU and RTU-over-TCP devices.
//!
//! A device's points are read with the fewest requests the device takes (the read
//! planner), each point at its own `poll_interval`; devices on one serial port share one
//! bus task that never lets requests overlap; a Modbus exception is the problem of the
//! points it concerns, a timeout or I/O error the transport's (retries, then offline and
//! back-off); `/set` writes go to writable coils and holding registers and are read back.
//! Keys, defaults and an example: `plugins/modbus/README.md` and `sample.toml`.
//!
//! # Layout
//! - [`config`]: the device's keys ([`ModbusConfig`]), parsed and checked, every error
//!   with its key path.
//! - [`value`]: data types and byte orders; the pure decode/encode between registers and
//!   values.
//! - [`plan`]: the read planner, merging the due points of a table into few requests.
//! - [`bus`]: [`Bus`], one task per line that owns the connection, times and serialises
//!   the requests; the process-wide registry of buses.
//! - [`adapter`]: [`ModbusAdapter`], the poll loop, exceptions per point, writes.
//! - [`cli`]: `sensorgate modbus read` and `sensorgate modbus scan`.

pub mod adapter;
pub mod bus;
pub mod cli;
pub mod config;
pub mod plan;
pub mod value;

use sensorgate_api::{Adapter, ConfigError, DeviceSpec, Plugin};

pub use adapter::ModbusAdapter;
pub use bus::Bus;
pub use config::ModbusConfig;

/// The plugin, for the daemon's plugin list: `plugin = "modbus"`.
pub static PLUGIN: ModbusPlugin = ModbusPlugin;

/// Builds [`ModbusAdapter`]s from `[[device]]` tables with `plugin = "modbus"`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ModbusPlugin;

impl Plugin for ModbusPlugin {
    fn name(&self) -> &'static str {
        "modbus"
    }

    fn build(&self, spec: &DeviceSpec) -> Result<Box<dyn Adapter>, Vec<ConfigError>> {
        let config = ModbusConfig::from_spec(spec)?;
        Ok(Box::new(ModbusAdapter::new(spec, config)))
    }
}
