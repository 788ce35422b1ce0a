//! The shipped examples build: `sample.toml` here, and the sim devices of the default
//! config, so that neither rots.

use std::path::Path;

use sensorgate_api::config::parse_duration;
use sensorgate_api::{DeviceSpec, Plugin};
use sensorgate_sim::PLUGIN;

/// Each `[[device]]` of `file` with `plugin = "sim"`, as the daemon would hand it over:
/// the common keys taken out.
fn sim_devices(file: &Path, state_dir: &Path) -> Vec<DeviceSpec> {
    let text = std::fs::read_to_string(file)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()));
    let mut root: toml::Table =
        toml::from_str(&text).unwrap_or_else(|e| panic!("{} is not TOML: {e}", file.display()));
    let Some(toml::Value::Array(devices)) = root.remove("device") else {
        panic!("{} has no [[device]]", file.display());
    };
    devices
        .into_iter()
        .filter_map(|d| {
            let toml::Value::Table(mut table) = d else {
                panic!("a [[device]] is not a table");
            };
            let plugin = table.remove("plugin")?.as_str()?.to_string();
            if plugin != "sim" {
                return None;
            }
            let name = table.remove("name").expect("device has a name");
            let interval = table
                .remove("poll_interval")
                .expect("device has a poll_interval");
            Some(DeviceSpec {
                name: name.as_str().expect("name is a string").into(),
                plugin,
                poll_interval: parse_duration(interval.as_str().expect("a string"))
                    .expect("poll_interval is a duration"),
                state_dir: state_dir.to_path_buf(),
                table,
            })
        })
        .collect()
}

#[test]
fn sample_toml_builds() {
    let dir = tempfile::TempDir::new().expect("temp dir");
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("sample.toml");
    let devices = sim_devices(&file, dir.path());
    assert_eq!(devices.len(), 1, "sample.toml has one sim device");
    let adapter = PLUGIN
        .build(&devices[0])
        .unwrap_or_else(|e| panic!("sample.toml does not build: {e:?}"));
    let points = adapter.points();
    let names: Vec<&str> = points.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["temperature", "humidity", "counter", "firmware"]);
    assert_eq!(points[0].source, "sine 18..24 over 10m");
    assert_eq!(points[0].unit.as_deref(), Some("°C"));
    assert_eq!(points[2].source, "counter (resumes after restarts)");
    assert!(points.iter().all(|p| !p.writable));
    assert_eq!(PLUGIN.name(), "sim");
}

#[test]
fn the_default_config_demo_builds() {
    let dir = tempfile::TempDir::new().expect("temp dir");
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/sensorgate.toml");
    let devices = sim_devices(&file, dir.path());
    assert!(!devices.is_empty(), "the default config has a sim device");
    for d in &devices {
        if let Err(e) = PLUGIN.build(d) {
            panic!("device {} of the default config: {e:?}", d.name);
        }
    }
}
