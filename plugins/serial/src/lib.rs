//! The `serial` plugin of sensorgate (being built).

use sensorgate_api::{Adapter, ConfigError, DeviceSpec, Plugin};

/// The plugin, for the daemon's plugin list: `plugin = "serial"`.
pub static PLUGIN: SerialPlugin = SerialPlugin;

/// Builds serial adapters from `[[device]]` tables with `plugin = "serial"`.
#[derive(Debug, Clone, Copy, Default)]
pub struct SerialPlugin;

impl Plugin for SerialPlugin {
    fn name(&self) -> &'static str {
        "serial"
    }

    fn build(&self, _spec: &DeviceSpec) -> Result<Box<dyn Adapter>, Vec<ConfigError>> {
        Err(vec![ConfigError::new(
            "plugin",
            "the serial plugin is not finished in this build",
        )])
    }
}
