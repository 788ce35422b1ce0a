//! The shipped examples work: `sample.toml` builds, and its devices, pointed at the
//! programs in `examples/`, publish valid readings through the adapter.

mod common;

use std::path::{Path, PathBuf};

use common::{next_batch, value};
use sensorgate_api::testing::{self, WAIT};
use sensorgate_api::{DeviceSpec, Plugin, Value};
use sensorgate_exec::PLUGIN;

fn here() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The exec devices of `sample.toml`, as the daemon would hand them over.
fn sample_devices(state_dir: &Path) -> Vec<DeviceSpec> {
    let file = here().join("sample.toml");
    let text = std::fs::read_to_string(&file).expect("read sample.toml");
    DeviceSpec::from_file(&text, "exec", state_dir).unwrap_or_else(|e| panic!("sample.toml: {e}"))
}

/// The same device with `/opt/sensors/<file>` in its command made `examples/<file>`.
fn with_examples(mut spec: DeviceSpec) -> DeviceSpec {
    let Some(toml::Value::Array(cmd)) = spec.table.get_mut("command") else {
        panic!("no command list");
    };
    for arg in cmd.iter_mut() {
        if let Some(file) = arg.as_str().and_then(|a| a.strip_prefix("/opt/sensors/")) {
            let path = here().join("examples").join(file);
            assert!(path.exists(), "{} is shipped", path.display());
            *arg = toml::Value::String(path.to_string_lossy().into_owned());
        }
    }
    spec
}

#[test]
fn sample_toml_builds() {
    let dir = tempfile::tempdir().expect("temp dir");
    let devices = sample_devices(dir.path());
    let names: Vec<&str> = devices.iter().map(|d| &*d.name).collect();
    assert_eq!(names, ["greenhouse", "gateway"]);
    for d in &devices {
        let a = PLUGIN
            .build(d)
            .unwrap_or_else(|e| panic!("device {}: {e:?}", d.name));
        assert!(!a.describe().is_empty());
    }
    assert_eq!(PLUGIN.name(), "exec");
}

#[tokio::test]
async fn the_python_dht22_example_streams_valid_readings() {
    common::capture_logs();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut spec = with_examples(sample_devices(dir.path()).remove(0));
    // No simulated checksum failures here: every read is a reading.
    if let Some(toml::Value::Array(cmd)) = spec.table.get_mut("command") {
        cmd.push("--fail-rate".into());
        cmd.push("0".into());
    }
    let adapter = PLUGIN.build(&spec).expect("builds");
    let mut dev = testing::start(adapter, &spec.name, dir.path());
    assert_eq!(dev.availability(WAIT).await, Some(true));
    let mut seen = Vec::new();
    for _ in 0..4 {
        let b = next_batch(&mut dev).await;
        assert_eq!(b.len(), 1, "point form: one reading a line");
        let r = &b[0];
        let v = r.value.as_f64().expect("a number");
        match &*r.point {
            "temperature" => {
                assert!((15.0..=30.0).contains(&v), "{v}");
                assert_eq!(r.unit.as_deref(), Some("°C"));
            }
            "humidity" => {
                assert!((20.0..=80.0).contains(&v), "{v}");
                assert_eq!(r.unit.as_deref(), Some("%"));
            }
            other => panic!("unexpected point {other}"),
        }
        seen.push(r.point.to_string());
    }
    assert!(seen.contains(&"temperature".to_string()) && seen.contains(&"humidity".to_string()));
    dev.stop().await.expect("a clean stop");
    assert!(
        common::logged_with(
            "greenhouse",
            log::Level::Info,
            "exited with status 0 on shutdown"
        ),
        "it handles SIGTERM: {:?}",
        common::logs_of("greenhouse")
    );
}

#[tokio::test]
async fn the_dht22_example_object_form_too() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut spec = with_examples(sample_devices(dir.path()).remove(0));
    spec.table.insert(
        "command".into(),
        toml::Value::Array(
            [
                "python3",
                &here().join("examples/dht22.py").to_string_lossy(),
                "--form",
                "object",
                "--fail-rate",
                "0",
            ]
            .iter()
            .map(|s| toml::Value::String(s.to_string()))
            .collect(),
        ),
    );
    let mut dev = testing::start(PLUGIN.build(&spec).expect("builds"), &spec.name, dir.path());
    let b = next_batch(&mut dev).await;
    assert_eq!(b.len(), 2);
    assert!(matches!(value(&b, "temperature"), Some(Value::Float(_))));
    assert!(value(&b, "humidity").is_some());
    dev.stop().await.expect("a clean stop");
}

#[tokio::test]
async fn the_shell_system_example_polls_valid_readings() {
    let dir = tempfile::tempdir().expect("temp dir");
    let spec = with_examples(sample_devices(dir.path()).remove(1));
    let mut dev = testing::start(PLUGIN.build(&spec).expect("builds"), &spec.name, dir.path());
    for _ in 0..2 {
        let b = next_batch(&mut dev).await;
        for point in ["load1", "load5", "load15"] {
            let v = value(&b, point).unwrap_or_else(|| panic!("{point} in {b:?}"));
            assert!(v.as_f64().is_some_and(|x| x >= 0.0), "{point} = {v:?}");
        }
        let mem = b
            .iter()
            .find(|r| &*r.point == "mem_available")
            .expect("mem_available");
        assert_eq!(mem.unit.as_deref(), Some("KiB"));
        assert!(matches!(mem.value, Value::Int(kib) if kib > 0));
        if let Some(t) = b.iter().find(|r| &*r.point == "cpu_temperature") {
            assert_eq!(t.unit.as_deref(), Some("°C"));
        }
    }
    dev.stop().await.expect("a clean stop");
}
