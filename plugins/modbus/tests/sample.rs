//! The shipped example builds: `sample.toml` here, so that it never rots; and its plan is
//! the one the README describes.

use std::path::Path;

use sensorgate_api::{DeviceSpec, Plugin};
use sensorgate_modbus::PLUGIN;

/// Each `[[device]]` of `file` with `plugin = "modbus"`, as the daemon would hand it over.
fn modbus_devices(file: &Path) -> Vec<DeviceSpec> {
    let text = std::fs::read_to_string(file)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()));
    DeviceSpec::from_file(&text, "modbus", &std::env::temp_dir())
        .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
}

#[test]
fn sample_toml_builds() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("sample.toml");
    let devices = modbus_devices(&file);
    let names: Vec<&str> = devices.iter().map(|d| &*d.name).collect();
    assert_eq!(names, ["heatpump", "meter_1", "meter_2"]);
    let adapters: Vec<_> = devices
        .iter()
        .map(|d| {
            PLUGIN
                .build(d)
                .unwrap_or_else(|e| panic!("device {} of sample.toml: {e:?}", d.name))
        })
        .collect();

    let heatpump = &adapters[0];
    let points = heatpump.points();
    let names: Vec<&str> = points.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "flow_temperature",
            "return_temperature",
            "setpoint",
            "compressor_on",
            "firmware",
            "pump",
            "alarm"
        ]
    );
    assert_eq!(points[0].source, "holding 100..101 f32 CDAB");
    assert_eq!(points[0].unit.as_deref(), Some("°C"));
    assert_eq!(points[1].source, "holding 102 i16 ×0.1");
    assert!(points[2].writable && points[5].writable && !points[0].writable);
    assert_eq!(points[3].source, "holding 120 bit 0");
    assert_eq!(points[4].source, "holding 200..207 string, every 1h");

    let plan = heatpump.describe();
    let want = [
        "modbus tcp 192.168.1.50:502, unit 1, timeout 1s, 1 retry",
        "read plan: 4 request(s) per cycle for 7 point(s) (max_gap 10, at most 125 registers / 2000 bits per read)",
        "  fc01 coil 0..0 (1 bit): pump",
        "  fc02 discrete 3..3 (1 bit): alarm",
        "  fc03 holding 100..120 (21 registers): flow_temperature, return_temperature, setpoint, compressor_on",
        "  fc03 holding 200..207 (8 registers): firmware",
        "points every 5s: 3 request(s) when due alone",
        "  fc01 coil 0..0 (1 bit): pump",
        "  fc02 discrete 3..3 (1 bit): alarm",
        "  fc03 holding 100..120 (21 registers): flow_temperature, return_temperature, setpoint, compressor_on",
        "points every 1h: 1 request(s) when due alone",
        "  fc03 holding 200..207 (8 registers): firmware",
    ];
    assert_eq!(plan, want);

    let meter = adapters[1].describe();
    assert_eq!(
        meter[0],
        "modbus rtu /dev/ttyUSB0 9600 8E1, unit 1, timeout 500ms, 2 retries"
    );
    assert!(meter[1].starts_with("read plan: 2 request(s)"), "{meter:?}");
    assert_eq!(PLUGIN.name(), "modbus");
}
