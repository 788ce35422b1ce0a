//! The counter over real runs: it resumes after the last value the daemon took over.

use std::time::SystemTime;

use sensorgate_api::{Adapter, AdapterError, Plugin, Value};
use sensorgate_sim::PLUGIN;

use sensorgate_api::testing::{self as common, Ack};

const DEVICE: &str = "[[point]]\nname = \"count\"\nsignal = \"counter\"\n\
                      [[point]]\nname = \"k\"\nsignal = \"constant\"\nvalue = 7\n";

fn build(state_dir: &std::path::Path) -> Box<dyn Adapter> {
    PLUGIN
        .build(&common::spec("sim", "demo", DEVICE, state_dir))
        .expect("the device builds")
}

fn counts(run: &common::Run) -> Vec<i64> {
    run.acked("count")
        .iter()
        .map(|r| match r.value {
            Value::Int(i) => i,
            ref v => panic!("a counter is an Int, got {v:?}"),
        })
        .collect()
}

fn saved(state_dir: &std::path::Path) -> serde_json::Value {
    let text = std::fs::read_to_string(state_dir.join("counters.json")).expect("counters.json");
    serde_json::from_str(&text).expect("counters.json is JSON")
}

#[tokio::test]
async fn the_counter_resumes_after_the_last_published_value() {
    let dir = tempfile::TempDir::new().expect("temp dir");

    let mut first = build(dir.path());
    let run1 = common::run(&mut *first, "demo", dir.path(), 4, |_| Ack::Yes).await;
    assert!(run1.result.is_ok(), "{:?}", run1.result);
    assert_eq!(
        run1.availability.first(),
        Some(&true),
        "online before readings"
    );
    let values1 = counts(&run1);
    assert!(values1.len() >= 4, "{values1:?}");
    assert_eq!(values1, (0..values1.len() as i64).collect::<Vec<_>>());
    let last = *values1.last().expect("a value");
    assert_eq!(saved(dir.path()), serde_json::json!({ "count": last }));
    assert!(!dir.path().join(".counters.json.tmp").exists());

    // Each poll is one batch: one reading per point, all with the same ts.
    for (batch, _) in &run1.batches {
        assert_eq!(batch.len(), 2);
        assert_eq!(batch[0].ts, batch[1].ts);
        assert!(batch[0].ts <= SystemTime::now());
        assert_eq!(batch[1].value, Value::Int(7));
    }

    // A fresh adapter on the same state folder, as after a restart.
    let mut second = build(dir.path());
    let run2 = common::run(&mut *second, "demo", dir.path(), 3, |_| Ack::Yes).await;
    assert!(run2.result.is_ok(), "{:?}", run2.result);
    let values2 = counts(&run2);
    assert_eq!(
        values2.first(),
        Some(&(last + 1)),
        "{values1:?} then {values2:?}"
    );
    assert_eq!(
        values2,
        (last + 1..last + 1 + values2.len() as i64).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn a_value_the_daemon_did_not_take_is_sent_again() {
    let dir = tempfile::TempDir::new().expect("temp dir");

    // Batches 0 and 1 taken over, batch 2 not (the daemon went away).
    let mut first = build(dir.path());
    let run1 = common::run(&mut *first, "demo", dir.path(), usize::MAX, |i| {
        if i < 2 {
            Ack::Yes
        } else {
            Ack::No
        }
    })
    .await;
    assert!(
        matches!(run1.result, Err(AdapterError::Cancelled)),
        "{:?}",
        run1.result
    );
    assert_eq!(counts(&run1), [0, 1]);
    assert_eq!(run1.batches.len(), 3);
    assert_eq!(saved(dir.path()), serde_json::json!({ "count": 1 }));

    let mut second = build(dir.path());
    let run2 = common::run(&mut *second, "demo", dir.path(), 1, |_| Ack::Yes).await;
    assert_eq!(
        counts(&run2).first(),
        Some(&2),
        "value 2 was not taken: sent again"
    );
}

#[tokio::test]
async fn a_corrupt_state_file_starts_at_zero_and_is_replaced() {
    let dir = tempfile::TempDir::new().expect("temp dir");
    std::fs::write(dir.path().join("counters.json"), "{ half a file").expect("write junk");

    let mut adapter = build(dir.path());
    let run = common::run(&mut *adapter, "demo", dir.path(), 2, |_| Ack::Yes).await;
    assert!(run.result.is_ok(), "{:?}", run.result);
    let values = counts(&run);
    assert_eq!(values.first(), Some(&0));
    let last = *values.last().expect("a value");
    assert_eq!(saved(dir.path()), serde_json::json!({ "count": last }));
}

#[tokio::test]
async fn a_missing_state_folder_is_created_and_other_entries_are_kept() {
    let dir = tempfile::TempDir::new().expect("temp dir");
    let state = dir.path().join("devices").join("demo");

    let mut adapter = build(&state);
    let run = common::run(&mut *adapter, "demo", &state, 1, |_| Ack::Yes).await;
    assert!(run.result.is_ok(), "{:?}", run.result);
    // A poll may slip in after the cancel and be taken over too: the saved value is the
    // last one acknowledged, whichever that was.
    let taken = counts(&run);
    assert_eq!(taken.first(), Some(&0));
    let last = *taken.last().expect("a value");
    assert_eq!(saved(&state)["count"], serde_json::json!(last));

    // A point no longer configured keeps its entry; the configured one resumes.
    std::fs::write(state.join("counters.json"), r#"{"count": 10, "old": 99}"#)
        .expect("write state");
    let mut adapter = build(&state);
    let run = common::run(&mut *adapter, "demo", &state, 1, |_| Ack::Yes).await;
    assert_eq!(counts(&run).first(), Some(&11));
    let last = *counts(&run).last().expect("a value");
    assert_eq!(
        saved(&state),
        serde_json::json!({ "count": last, "old": 99 })
    );
}
