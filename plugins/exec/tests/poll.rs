//! Poll mode: one run per poll_interval, its readings one batch; a run that hangs is
//! stopped at its timeout, a run that fails makes the device offline.

mod common;

use common::*;
use sensorgate_api::testing::WAIT;
use sensorgate_api::Value;

#[tokio::test]
async fn each_run_is_one_batch() {
    capture_logs();
    let dir = tempfile::tempdir().expect("temp dir");
    let count = dir.path().join("count");
    let s = script(
        dir.path(),
        "poll.sh",
        &format!(
            r#"
echo x >> {count}
echo "{{\"runs\": $(wc -l < {count})}}"
echo '{{"point": "load", "value": 0.5, "unit": "%"}}'
echo "I! mode $SENSORGATE_MODE, device $SENSORGATE_DEVICE, protocol $SENSORGATE_PROTOCOL" >&2
"#,
            count = lit(count.to_string_lossy())
        ),
    );
    let (mut dev, stats) = start(
        "poller",
        &format!(
            "command = [\"sh\", {}]\nmode = \"poll\"\ntimeout = \"5s\"",
            lit(s.to_string_lossy())
        ),
        dir.path(),
    );
    for run in 1..=3 {
        let b = next_batch(&mut dev).await;
        assert_eq!(b.len(), 2, "both lines of a run in one batch: {b:?}");
        assert_eq!(value(&b, "runs"), Some(Value::Int(run)));
        assert_eq!(value(&b, "load"), Some(Value::Float(0.5)));
    }
    assert!(stats.starts() >= 3);
    assert_eq!(stats.timeouts(), 0);
    assert!(
        logged_with(
            "poller",
            log::Level::Info,
            "mode poll, device poller, protocol 1"
        ),
        "the SENSORGATE_* variables are set"
    );
    dev.stop().await.expect("a clean stop");
}

#[tokio::test]
async fn a_run_that_hangs_is_stopped_at_its_timeout() {
    capture_logs();
    let dir = tempfile::tempdir().expect("temp dir");
    let pid_file = dir.path().join("pid");
    let s = script(
        dir.path(),
        "hang.sh",
        &format!(
            "echo $$ >> {}\nexec sleep 600\n",
            lit(pid_file.to_string_lossy())
        ),
    );
    let (mut dev, stats) = start(
        "hanger",
        &format!(
            "command = [\"sh\", {}]\nmode = \"poll\"\ntimeout = \"300ms\"\nstop_timeout = \"200ms\"",
            lit(s.to_string_lossy())
        ),
        dir.path(),
    );
    assert_eq!(
        dev.availability(WAIT).await,
        Some(false),
        "a run that hangs is offline"
    );
    assert!(stats.timeouts() >= 1);
    let first = read_pid(&pid_file).await;
    let _guard = KillOnDrop(first);
    assert_eq!(
        proc_state(first),
        None,
        "the hung run was killed and reaped"
    );
    assert!(logged_with(
        "hanger",
        log::Level::Warn,
        "did not finish within 300ms and was stopped (was killed by signal 15)"
    ));
    dev.stop().await.expect("a clean stop");
}

#[tokio::test]
async fn readings_of_a_run_that_then_hangs_are_kept() {
    let dir = tempfile::tempdir().expect("temp dir");
    let s = script(
        dir.path(),
        "half.sh",
        "echo '{\"t\": 20}'\ntrap '' TERM\nwhile :; do sleep 0.05; done\n",
    );
    let (mut dev, stats) = start(
        "half",
        &format!(
            "command = [\"sh\", {}]\nmode = \"poll\"\ntimeout = \"200ms\"\nstop_timeout = \"100ms\"",
            lit(s.to_string_lossy())
        ),
        dir.path(),
    );
    let b = next_batch(&mut dev).await;
    assert_eq!(value(&b, "t"), Some(Value::Int(20)));
    assert!(
        stats.timeouts() >= 1,
        "published only once the run was stopped"
    );
    dev.stop().await.expect("a clean stop");
}

#[tokio::test]
async fn a_failing_run_is_offline_and_says_why() {
    capture_logs();
    let dir = tempfile::tempdir().expect("temp dir");
    let flag = dir.path().join("fail");
    std::fs::write(&flag, "").expect("flag");
    let s = script(
        dir.path(),
        "fail.sh",
        &format!(
            "if [ -e {f} ]; then echo 'E! no sensor on pin 4' >&2; exit 2; fi\necho '{{\"t\": 1}}'\n",
            f = lit(flag.to_string_lossy())
        ),
    );
    let (mut dev, _stats) = start(
        "failer",
        &format!(
            "command = [\"sh\", {}]\nmode = \"poll\"",
            lit(s.to_string_lossy())
        ),
        dir.path(),
    );
    assert_eq!(dev.availability(WAIT).await, Some(false));
    assert!(logged_with(
        "failer",
        log::Level::Warn,
        "exited with status 2 (last on stderr: E! no sensor on pin 4)"
    ));
    std::fs::remove_file(&flag).expect("unflag");
    let b = next_batch(&mut dev).await;
    assert_eq!(value(&b, "t"), Some(Value::Int(1)));
    dev.stop().await.expect("a clean stop");
}

#[tokio::test]
async fn a_run_that_floods_is_capped() {
    let dir = tempfile::tempdir().expect("temp dir");
    let s = script(
        dir.path(),
        "many.py",
        "for i in range(10_005):\n    print('{\"n\": %d}' % i)\n",
    );
    let (mut dev, stats) = start(
        "many",
        &format!(
            "command = [\"python3\", {}]\nmode = \"poll\"",
            lit(s.to_string_lossy())
        ),
        dir.path(),
    );
    let b = next_batch(&mut dev).await;
    assert_eq!(b.len(), sensorgate_exec::adapter::MAX_RUN_READINGS);
    assert_eq!(value(&b[9_999..], "n"), Some(Value::Int(9_999)));
    assert_eq!(
        stats.invalid_lines(),
        5,
        "the lines past the cap are counted"
    );
    dev.stop().await.expect("a clean stop");
}
