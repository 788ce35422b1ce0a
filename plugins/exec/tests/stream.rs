//! Stream mode against real child processes: both line forms, bad lines, standard error
//! levels, and a flood that must not grow memory.

mod common;

use std::time::{Duration, UNIX_EPOCH};

use common::*;
use sensorgate_api::testing::{Event, WAIT};
use sensorgate_api::{format_ts, Value};

#[tokio::test]
async fn both_line_forms_become_readings() {
    let dir = tempfile::tempdir().expect("temp dir");
    let s = script(
        dir.path(),
        "dht.py",
        r#"
import json, sys, time
print(json.dumps({"temperature": 21.5, "humidity": 40, "ok": True, "state": "fine"}))
print(json.dumps({"point": "temperature", "value": 22.25, "unit": "°C",
                  "ts": "2026-11-22T03:46:03.123+01:00"}))
print(json.dumps({"point": "pressure", "value": 1013, "ts": 1795315563.5}))
sys.stdout.flush()
time.sleep(60)
"#,
    );
    let (mut dev, _stats) = start(
        "forms",
        &format!("command = [\"python3\", {}]", lit(s.to_string_lossy())),
        dir.path(),
    );
    assert_eq!(
        dev.availability(WAIT).await,
        Some(true),
        "online once running"
    );
    let t0 = std::time::SystemTime::now() - Duration::from_secs(60);

    let b = next_batch(&mut dev).await;
    assert_eq!(b.len(), 4, "one reading per key: {b:?}");
    assert_eq!(value(&b, "temperature"), Some(Value::Float(21.5)));
    assert_eq!(value(&b, "humidity"), Some(Value::Int(40)));
    assert_eq!(value(&b, "ok"), Some(Value::Bool(true)));
    assert_eq!(value(&b, "state"), Some(Value::Text("fine".into())));
    assert!(b.iter().all(|r| &*r.device == "forms" && r.unit.is_none()));
    assert!(b.iter().all(|r| r.ts > t0), "ts defaults to the time read");

    let b = next_batch(&mut dev).await;
    assert_eq!(b.len(), 1);
    assert_eq!(value(&b, "temperature"), Some(Value::Float(22.25)));
    assert_eq!(b[0].unit.as_deref(), Some("°C"));
    assert_eq!(format_ts(b[0].ts), "2026-11-22T02:46:03.123Z");

    let b = next_batch(&mut dev).await;
    assert_eq!(value(&b, "pressure"), Some(Value::Int(1013)));
    assert_eq!(
        b[0].ts.duration_since(UNIX_EPOCH).unwrap(),
        Duration::from_millis(1_795_315_563_500)
    );
    dev.stop().await.expect("a clean stop");
}

#[tokio::test]
async fn bad_lines_are_counted_and_skipped_while_good_ones_flow() {
    capture_logs();
    let dir = tempfile::tempdir().expect("temp dir");
    let s = script(
        dir.path(),
        "garbage.sh",
        r#"
echo 'not json'
echo '{"good": 1}'
echo '[1, 2]'
echo '{"Temperature": 1}'
echo '{"a": {"b": 1}}'
echo '{"point": "x", "value": 1, "colour": "red"}'
echo '{"point": "t", "value": 2.5, "unit": "C"}'
head -c 70000 /dev/zero | tr '\0' x; echo
printf '\377\376\n'
echo ''
echo '{"good": 2}'
exec sleep 60
"#,
    );
    let (mut dev, stats) = start(
        "garbage",
        &format!("command = [\"sh\", {}]", lit(s.to_string_lossy())),
        dir.path(),
    );
    let b = next_batch(&mut dev).await;
    assert_eq!(value(&b, "good"), Some(Value::Int(1)));
    let b = next_batch(&mut dev).await;
    assert_eq!(value(&b, "t"), Some(Value::Float(2.5)));
    assert_eq!(b[0].unit.as_deref(), Some("C"));
    let b = next_batch(&mut dev).await;
    assert_eq!(value(&b, "good"), Some(Value::Int(2)));
    // not json, array, bad name, nested, extra key, too long, not UTF-8; the blank line
    // is no reading but no fault either.
    assert_eq!(stats.invalid_lines(), 7);
    // One warning at the first bad line; the rest within the minute are only counted.
    let warnings: Vec<_> = logs_of("garbage")
        .into_iter()
        .filter(|(l, _, m)| *l == log::Level::Warn && m.contains("not exec protocol 1"))
        .collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].2.contains("not JSON"), "{warnings:?}");
    assert!(
        warnings[0].2.contains("not json"),
        "the line is shown: {warnings:?}"
    );
    dev.stop().await.expect("a clean stop");
    // The rest is told when the program ends.
    assert!(logged_with(
        "garbage",
        log::Level::Warn,
        "skipped 6 more line(s) of output"
    ));
}

#[tokio::test]
async fn stderr_prefixes_pick_the_log_level() {
    capture_logs();
    let dir = tempfile::tempdir().expect("temp dir");
    let s = script(
        dir.path(),
        "talk.sh",
        r#"
echo 'E! sensor gone' >&2
echo 'W! checksum mismatch' >&2
echo 'I! started on pin 4' >&2
echo 'D! raw 0x1f 0x2a' >&2
echo 'plain words' >&2
echo '{"ok": 1}'
exec sleep 60
"#,
    );
    let (mut dev, _stats) = start(
        "talker",
        &format!("command = [\"sh\", {}]", lit(s.to_string_lossy())),
        dir.path(),
    );
    next_batch(&mut dev).await;
    use log::Level::*;
    let expected = [
        (Error, "device talker: sensor gone"),
        (Warn, "device talker: checksum mismatch"),
        (Info, "device talker: started on pin 4"),
        (Debug, "device talker: raw 0x1f 0x2a"),
        (Info, "device talker: plain words"),
    ];
    let all_there = eventually(|| {
        expected
            .iter()
            .all(|(level, text)| logged_with("talker", *level, text))
    })
    .await;
    assert!(all_there, "logged: {:#?}", logs_of("talker"));
    assert!(logs_of("talker")
        .iter()
        .filter(|(_, _, m)| m.contains("sensor gone"))
        .all(|(_, target, _)| target == "sensorgate_exec::stderr"));
    dev.stop().await.expect("a clean stop");
}

#[tokio::test]
async fn a_flood_is_held_back_by_the_pipe_and_arrives_in_order() {
    const LINES: u64 = 100_000;
    let dir = tempfile::tempdir().expect("temp dir");
    let progress = dir.path().join("progress");
    let s = script(
        dir.path(),
        "flood.py",
        &format!(
            r#"
import os, sys, time
def note(s):
    with open({p:?} + ".tmp", "w") as f:
        f.write(s)
    os.replace({p:?} + ".tmp", {p:?})
for i in range({LINES}):
    sys.stdout.write('{{"n": %d}}\n' % i)
    if i % 500 == 0:
        note(str(i))
sys.stdout.flush()
note("done")
time.sleep(60)
"#,
            p = progress.to_string_lossy()
        ),
    );
    let (mut dev, _stats) = start(
        "flood",
        &format!("command = [\"python3\", {}]", lit(s.to_string_lossy())),
        dir.path(),
    );
    let mut expected = 0u64;
    let take = |b: Vec<sensorgate_api::Reading>, expected: &mut u64| {
        assert_eq!(b.len(), 1);
        assert_eq!(
            value(&b, "n"),
            Some(Value::Int(*expected as i64)),
            "in order"
        );
        *expected += 1;
    };
    for _ in 0..10 {
        let b = next_batch(&mut dev).await;
        take(b, &mut expected);
    }
    // Stop reading: the program must come to a halt, blocked on a full pipe, not run
    // to its end into a buffer of ours.
    let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap_or_default();
    // Halted: the same count at three looks 200 ms apart.
    let mut last = read(&progress);
    let mut same = 0;
    let deadline = tokio::time::Instant::now() + WAIT;
    while same < 3 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = read(&progress);
        same = if now == last { same + 1 } else { 0 };
        last = now;
    }
    let halted = same >= 3;
    assert!(halted, "the program never stopped writing");
    assert_ne!(last, "done", "the whole flood was buffered");
    let ahead: u64 = last.trim().parse().expect("a line count");
    eprintln!("flood: the program halted {ahead} lines in, {expected} read");
    // What may sit between the program and us: the pipe (64 KiB), the line reader's
    // buffer (8 KiB) and one batch, at 11+ bytes a line: well under 20 000 lines.
    assert!(
        ahead < expected + 20_000,
        "the program got {ahead} lines ahead of {expected} read"
    );
    while expected < LINES {
        let b = next_batch(&mut dev).await;
        take(b, &mut expected);
    }
    assert!(
        eventually(|| read(&progress) == "done").await,
        "the program finished once read"
    );
    assert!(
        matches!(
            dev.next(Duration::from_millis(100)).await,
            None | Some(Event::Availability(_))
        ),
        "nothing more than the lines printed"
    );
    dev.stop().await.expect("a clean stop");
}

#[tokio::test]
async fn env_and_working_dir_reach_the_program() {
    let dir = tempfile::tempdir().expect("temp dir");
    let work = dir.path().join("work");
    std::fs::create_dir(&work).expect("mkdir");
    script(
        &work,
        "where.sh",
        "#!/bin/sh\nprintf '{\"cwd\": \"%s\", \"pin\": %s, \"device\": \"%s\", \"every\": %s}\\n' \
         \"$(pwd)\" \"$DHT22_PIN\" \"$SENSORGATE_DEVICE\" \"$SENSORGATE_POLL_INTERVAL_MS\"\n\
         exec sleep 60\n",
    );
    let (mut dev, _stats) = start(
        "where",
        &format!(
            "command = [\"./where.sh\"]\nworking_dir = {}\nenv = {{ DHT22_PIN = \"4\" }}",
            lit(work.to_string_lossy())
        ),
        dir.path(),
    );
    let b = next_batch(&mut dev).await;
    let cwd = std::fs::canonicalize(&work).expect("canonical");
    assert_eq!(
        value(&b, "cwd"),
        Some(Value::Text(cwd.to_string_lossy().into_owned()))
    );
    assert_eq!(value(&b, "pin"), Some(Value::Int(4)));
    assert_eq!(value(&b, "device"), Some(Value::Text("where".into())));
    assert_eq!(
        value(&b, "every"),
        Some(Value::Int(sensorgate_api::testing::POLL.as_millis() as i64))
    );
    dev.stop().await.expect("a clean stop");
}
