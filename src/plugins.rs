//! The one list of device plugins built into this binary: `plugin = "…"` picks one.
//!
//! Each plugin is a Cargo feature (`plugin-sim`, …), so a build can leave out what a
//! site does not use. To add a plugin: a crate under `plugins/`, a feature in
//! Cargo.toml, one line here.

use sensorgate_api::Plugin;

/// Plugins of the contract that a build may leave out, for a clearer error.
const FIRST_PARTY: &[&str] = &["modbus", "serial", "exec", "sim", "onewire"];

/// Every plugin in this build.
static PLUGINS: &[&dyn Plugin] = &[
    #[cfg(feature = "plugin-sim")]
    &sensorgate_sim::PLUGIN,
    #[cfg(feature = "plugin-modbus")]
    &sensorgate_modbus::PLUGIN,
    #[cfg(feature = "plugin-serial")]
    &sensorgate_serial::PLUGIN,
    #[cfg(feature = "plugin-exec")]
    &sensorgate_exec::PLUGIN,
    #[cfg(feature = "plugin-onewire")]
    &sensorgate_onewire::PLUGIN,
];

/// Every plugin in this build.
pub fn all() -> &'static [&'static dyn Plugin] {
    PLUGINS
}

/// The plugin called `name`.
pub fn find(name: &str) -> Option<&'static dyn Plugin> {
    all().iter().copied().find(|p| p.name() == name)
}

/// The names of the plugins in this build.
pub fn names() -> Vec<&'static str> {
    all().iter().map(|p| p.name()).collect()
}

/// What to tell a user who asked for a plugin this build does not have.
pub fn unknown_message(name: &str) -> String {
    let have = names().join(", ");
    if FIRST_PARTY.contains(&name) {
        format!("plugin {name:?} is not built into this binary (it has: {have})")
    } else {
        format!("unknown plugin {name:?} (this build has: {have})")
    }
}
