//! The shipped example builds: `sample.toml` here, so that it never rots.

use std::path::Path;

use sensorgate_api::{DeviceSpec, Plugin};
use sensorgate_onewire::PLUGIN;

#[test]
fn sample_toml_builds() {
    let dir = tempfile::TempDir::new().expect("temp dir");
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("sample.toml");
    let text = std::fs::read_to_string(&file).expect("sample.toml reads");
    let devices = DeviceSpec::from_file(&text, "onewire", dir.path())
        .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    assert_eq!(devices.len(), 1, "sample.toml has one onewire device");
    let adapter = PLUGIN
        .build(&devices[0])
        .unwrap_or_else(|e| panic!("sample.toml does not build: {e:?}"));
    let points = adapter.points();
    let names: Vec<&str> = points.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["boiler_flow", "boiler_return", "outside"]);
    assert_eq!(points[0].source, "sensor 28-0316a2794bff, offset -0.25");
    assert_eq!(points[0].unit.as_deref(), Some("°C"));
    assert_eq!(points[0].device_class.as_deref(), Some("temperature"));
    assert_eq!(points[2].unit.as_deref(), Some("°F"));
    assert!(points.iter().all(|p| !p.writable));
    assert!(adapter.describe()[0].contains("/sys/bus/w1/devices"));

    // The commented defaults, uncommented, build too.
    let uncommented = text
        .replace("# root", "root")
        .replace("# timeout", "timeout");
    let uncommented = uncommented
        .replace("# offline_after", "offline_after")
        .replace("# device_class", "device_class")
        .replace("# state_class", "state_class");
    let devices = DeviceSpec::from_file(&uncommented, "onewire", dir.path()).expect("parses");
    assert!(devices[0].table.contains_key("timeout"));
    if let Err(e) = PLUGIN.build(&devices[0]) {
        panic!("sample.toml with its defaults set does not build: {e:?}");
    }
    assert_eq!(PLUGIN.name(), "onewire");
}
