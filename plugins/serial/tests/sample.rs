//! The shipped example builds, so that it does not rot: `sample.toml` through the plugin.

use std::path::Path;
use std::time::Duration;

use sensorgate_api::{DeviceSpec, Plugin};
use sensorgate_serial::PLUGIN;

#[test]
fn sample_toml_builds() {
    let dir = tempfile::TempDir::new().expect("temp dir");
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("sample.toml");
    let text = std::fs::read_to_string(&file)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()));
    let devices = DeviceSpec::from_file(&text, "serial", dir.path())
        .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    assert_eq!(devices.len(), 2, "sample.toml has two serial devices");

    let weather = PLUGIN
        .build(&devices[0])
        .unwrap_or_else(|e| panic!("sample.toml device[0] does not build: {e:?}"));
    let points = weather.points();
    let names: Vec<&str> = points.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["temperature", "humidity", "pressure", "wind_speed"]);
    assert_eq!(points[2].unit.as_deref(), Some("hPa"));
    assert_eq!(points[2].source, "key \"P\" * 0.1 + 0");
    assert_eq!(points[0].device_class.as_deref(), Some("temperature"));
    assert!(weather.describe()[0].ends_with("9600 8N1"));

    assert_eq!(&*devices[1].name, "soil");
    assert_eq!(devices[1].poll_interval, Duration::from_secs(30));
    let soil = PLUGIN
        .build(&devices[1])
        .unwrap_or_else(|e| panic!("sample.toml device[1] does not build: {e:?}"));
    let names: Vec<String> = soil.points().into_iter().map(|p| p.name).collect();
    assert_eq!(names, ["moisture", "soil_temperature"]);
    assert!(soil.describe()[2].starts_with("request/response"));
    assert_eq!(PLUGIN.name(), "serial");
}

/// The example lines in sample.toml's comments give the readings the README shows.
#[test]
fn sample_lines_decode_as_documented() {
    use sensorgate_api::Value;
    use sensorgate_serial::parse::Decoder;
    use sensorgate_serial::SerialConfig;

    let dir = tempfile::TempDir::new().expect("temp dir");
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("sample.toml");
    let text = std::fs::read_to_string(&file).expect("sample.toml");
    let devices = DeviceSpec::from_file(&text, "serial", dir.path()).expect("parses");
    let decode = |i: usize, line: &str| {
        let cfg = SerialConfig::from_spec(&devices[i]).expect("builds");
        let mut out = Vec::new();
        Decoder::new(devices[i].name.clone(), &cfg)
            .decode(line.as_bytes(), std::time::SystemTime::now(), &mut out)
            .expect("the sample line decodes");
        out.into_iter()
            .map(|r| (r.point.to_string(), r.value, r.unit.map(|u| u.to_string())))
            .collect::<Vec<_>>()
    };
    let s = |x: &str| Some(x.to_string());
    let got = decode(0, "T=21.5,H=40,P=10132,WS=3.4,WD=270,RAIN=0.2");
    assert_eq!(got[0], ("temperature".into(), Value::Float(21.5), s("°C")));
    assert_eq!(got[1], ("humidity".into(), Value::Int(40), s("%")));
    let (name, Value::Float(p), unit) = &got[2] else {
        panic!("pressure is a float: {got:?}")
    };
    assert_eq!((name.as_str(), unit.as_deref()), ("pressure", Some("hPa")));
    assert!((p - 1013.2).abs() < 1e-9, "{p}");
    assert_eq!(got[3], ("wind_speed".into(), Value::Float(3.4), s("m/s")));
    assert_eq!(got[4], ("wd".into(), Value::Int(270), None));
    assert_eq!(got[5], ("rain".into(), Value::Float(0.2), None));

    let got = decode(1, "SOIL m=31.5% t=12.25C");
    assert_eq!(got[0], ("moisture".into(), Value::Float(31.5), s("%")));
    assert_eq!(
        got[1],
        ("soil_temperature".into(), Value::Float(12.25), s("°C"))
    );
}
