//! The values of sine, random and constant points over real runs.

use sensorgate_api::{Plugin, Value};
use sensorgate_sim::PLUGIN;

use sensorgate_api::testing::{self as common, Ack};

const DEVICE: &str = r#"
[[point]]
name = "wave"
signal = "sine"
period = "1s"
min = 18.0
max = 24.0
decimals = 1
unit = "°C"

[[point]]
name = "noise"
signal = "random"
min = -5
max = 5
decimals = 3

[[point]]
name = "answer"
signal = "constant"
value = 42

[[point]]
name = "ratio"
signal = "constant"
value = 0.25

[[point]]
name = "flag"
signal = "constant"
value = true

[[point]]
name = "firmware"
signal = "constant"
value = "1.4.2"
unit = "v"
"#;

fn floats(run: &common::Run, point: &str) -> Vec<f64> {
    run.acked(point)
        .iter()
        .map(|r| match r.value {
            Value::Float(f) => f,
            ref v => panic!("{point} is a Float, got {v:?}"),
        })
        .collect()
}

/// `x` has at most `decimals` digits after the point.
fn is_rounded(x: f64, decimals: i32) -> bool {
    let scaled = x * 10f64.powi(decimals);
    (scaled - scaled.round()).abs() < 1e-6
}

#[tokio::test]
async fn values_stay_in_their_range() {
    let dir = tempfile::TempDir::new().expect("temp dir");
    let mut adapter = PLUGIN
        .build(&common::spec("sim", "sim", DEVICE, dir.path()))
        .expect("the device builds");
    let run = common::run(&mut *adapter, "sim", dir.path(), 25, |_| Ack::Yes).await;
    assert!(run.result.is_ok(), "{:?}", run.result);

    let wave = floats(&run, "wave");
    assert!(wave.len() >= 25);
    assert!(wave.iter().all(|v| (18.0..=24.0).contains(v)), "{wave:?}");
    assert!(wave.iter().all(|v| is_rounded(*v, 1)), "{wave:?}");
    // Over half a second of a 1 s wave it moves.
    assert!(wave.iter().any(|v| *v != wave[0]), "{wave:?}");
    let units: Vec<_> = run.acked("wave").iter().map(|r| r.unit.clone()).collect();
    assert!(units.iter().all(|u| u.as_deref() == Some("°C")));

    let noise = floats(&run, "noise");
    assert!(noise.iter().all(|v| (-5.0..=5.0).contains(v)), "{noise:?}");
    assert!(noise.iter().all(|v| is_rounded(*v, 3)), "{noise:?}");
    assert!(noise.iter().any(|v| *v != noise[0]), "{noise:?}");

    for (point, want) in [
        ("answer", Value::Int(42)),
        ("ratio", Value::Float(0.25)),
        ("flag", Value::Bool(true)),
        ("firmware", Value::Text("1.4.2".into())),
    ] {
        let got = run.acked(point);
        assert_eq!(got.len(), wave.len());
        assert!(got.iter().all(|r| r.value == want), "{point}: {got:?}");
    }
    assert!(run.acked("answer").iter().all(|r| r.unit.is_none()));
    // Nothing of this device keeps state: no counter, no file.
    assert!(!dir.path().join("counters.json").exists());
}

#[test]
fn points_say_where_values_come_from() {
    let dir = tempfile::TempDir::new().expect("temp dir");
    let adapter = PLUGIN
        .build(&common::spec("sim", "sim", DEVICE, dir.path()))
        .expect("the device builds");
    let sources: Vec<String> = adapter.points().into_iter().map(|p| p.source).collect();
    assert_eq!(
        sources,
        [
            "sine 18..24 over 1s",
            "random -5..5",
            "constant 42",
            "constant 0.25",
            "constant true",
            "constant \"1.4.2\"",
        ]
    );
    assert!(
        adapter.describe().is_empty(),
        "no counter, nothing to describe"
    );
}
