//! The `exec` plugin of sensorgate (being built).

use sensorgate_api::{Adapter, ConfigError, DeviceSpec, Plugin};

/// The plugin, for the daemon's plugin list: `plugin = "exec"`.
pub static PLUGIN: ExecPlugin = ExecPlugin;

/// Builds exec adapters from `[[device]]` tables with `plugin = "exec"`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ExecPlugin;

impl Plugin for ExecPlugin {
    fn name(&self) -> &'static str {
        "exec"
    }

    fn build(&self, _spec: &DeviceSpec) -> Result<Box<dyn Adapter>, Vec<ConfigError>> {
        Err(vec![ConfigError::new(
            "plugin",
            "the exec plugin is not finished in this build",
        )])
    }
}
