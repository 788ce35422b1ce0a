//! The `onewire` plugin of sensorgate (being built).

use sensorgate_api::{Adapter, ConfigError, DeviceSpec, Plugin};

/// The plugin, for the daemon's plugin list: `plugin = "onewire"`.
pub static PLUGIN: OnewirePlugin = OnewirePlugin;

/// Builds onewire adapters from `[[device]]` tables with `plugin = "onewire"`.
#[derive(Debug, Clone, Copy, Default)]
pub struct OnewirePlugin;

impl Plugin for OnewirePlugin {
    fn name(&self) -> &'static str {
        "onewire"
    }

    fn build(&self, _spec: &DeviceSpec) -> Result<Box<dyn Adapter>, Vec<ConfigError>> {
        Err(vec![ConfigError::new(
            "plugin",
            "the onewire plugin is not finished in this build",
        )])
    }
}
