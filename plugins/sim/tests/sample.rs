//! The shipped examples build: `sample.toml` here, and the sim devices of the default
//! config, so that neither rots.

use std::path::Path;

use sensorgate_api::{DeviceSpec, Plugin};
use sensorgate_sim::PLUGIN;

/// Each `[[device]]` of `file` with `plugin = "sim"`, as the daemon would hand it over.
fn sim_devices(file: &Path, state_dir: &Path) -> Vec<DeviceSpec> {
    let text = std::fs::read_to_string(file)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()));
    DeviceSpec::from_file(&text, "sim", state_dir)
        .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
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
