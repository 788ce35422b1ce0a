//! A streaming program that ends: offline, restarted with back-off, online again; and the
//! restart latency (run with `--nocapture` to see it).

mod common;

use std::time::{Duration, Instant};

use common::*;
use sensorgate_api::testing::WAIT;
use sensorgate_api::Value;
use tokio::io::AsyncBufReadExt;

#[tokio::test]
async fn a_crash_is_offline_then_restarted_and_online_again() {
    capture_logs();
    let dir = tempfile::tempdir().expect("temp dir");
    let helper = dir.path().join("helper.pid");
    let s = script(
        dir.path(),
        "crash.sh",
        &format!(
            r#"
sleep 600 &
echo $! > {helper}
echo '{{"n": 1}}'
echo 'E! lost the sensor' >&2
exit 3
"#,
            helper = lit(helper.to_string_lossy())
        ),
    );
    let (mut dev, stats) = start(
        "crashy",
        &format!(
            "command = [\"sh\", {}]\nrestart_delay = \"100ms\"",
            lit(s.to_string_lossy())
        ),
        dir.path(),
    );
    assert_eq!(dev.availability(WAIT).await, Some(true));
    let helper_pid = read_pid(&helper).await;
    let _guard = KillOnDrop(helper_pid);
    let b = next_batch(&mut dev).await;
    assert_eq!(value(&b, "n"), Some(Value::Int(1)));
    assert_eq!(
        dev.availability(WAIT).await,
        Some(false),
        "offline after the exit"
    );
    assert!(
        eventually(|| dead(helper_pid)).await,
        "the helper it left behind was killed"
    );
    assert_eq!(dev.availability(WAIT).await, Some(true), "online again");
    let b = next_batch(&mut dev).await;
    assert_eq!(
        value(&b, "n"),
        Some(Value::Int(1)),
        "the new program's reading"
    );
    assert!(stats.starts() >= 2);
    assert!(stats.exits() >= 1);
    assert!(logged_with(
        "crashy",
        log::Level::Warn,
        "exited with status 3 (last on stderr: E! lost the sensor); starting it again in"
    ));
    dev.stop().await.expect("a clean stop");
}

#[tokio::test]
async fn restarts_back_off() {
    let dir = tempfile::tempdir().expect("temp dir");
    let s = script(dir.path(), "quit.sh", "echo '{\"n\": 1}'\n");
    let (mut dev, stats) = start(
        "quitter",
        &format!(
            "command = [\"sh\", {}]\nrestart_delay = \"50ms\"",
            lit(s.to_string_lossy())
        ),
        dir.path(),
    );
    // Each delay is 50..100 % of a step that doubles: 50, 100, 200, 400 ms.
    let mut delays = Vec::new();
    for _ in 0..4 {
        assert_eq!(dev.availability(WAIT).await, Some(true));
        assert_eq!(dev.availability(WAIT).await, Some(false));
        delays.push(stats.last_restart_delay());
    }
    for (i, d) in delays.iter().enumerate() {
        let step = Duration::from_millis(50 << i);
        assert!(*d >= step / 2 && *d <= step, "delay {i}: {d:?}");
    }
    dev.stop().await.expect("a clean stop");
}

#[tokio::test]
async fn a_program_that_cannot_start_is_offline_and_retried() {
    capture_logs();
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut dev, stats) = start(
        "missing",
        "command = [\"/nonexistent/sensor\", \"--pin\", \"4\"]\nrestart_delay = \"50ms\"",
        dir.path(),
    );
    assert_eq!(dev.availability(WAIT).await, Some(false));
    assert!(
        eventually(|| logs_of("missing")
            .iter()
            .filter(|(_, _, m)| m.contains(
                "cannot start `/nonexistent/sensor --pin 4`: No such file or directory \
                 (os error 2); use an absolute path"
            ))
            .count()
            >= 2)
        .await,
        "tried again: {:?}",
        logs_of("missing")
    );
    assert_eq!(stats.starts(), 0);
    dev.stop().await.expect("a clean stop");
}

#[tokio::test]
async fn closing_stdout_while_running_is_an_end_too() {
    capture_logs();
    let dir = tempfile::tempdir().expect("temp dir");
    let pid_file = dir.path().join("pid");
    let s = script(
        dir.path(),
        "close.sh",
        &format!(
            "echo $$ > {}\necho '{{\"n\": 1}}'\nexec >&-\nexec sleep 600\n",
            lit(pid_file.to_string_lossy())
        ),
    );
    let (mut dev, _stats) = start(
        "closer",
        &format!(
            "command = [\"sh\", {}]\nstop_timeout = \"200ms\"",
            lit(s.to_string_lossy())
        ),
        dir.path(),
    );
    let pid = read_pid(&pid_file).await;
    let _guard = KillOnDrop(pid);
    next_batch(&mut dev).await;
    assert_eq!(dev.availability(WAIT).await, Some(false));
    assert_eq!(proc_state(pid), None, "stopped and reaped");
    assert!(logged_with(
        "closer",
        log::Level::Warn,
        "closed its standard output and was stopped (was killed by signal 15)"
    ));
    dev.stop().await.expect("a clean stop");
}

/// The figure: from a crashed program's exit (seen as `offline`) to the first reading of
/// the new one, against starting the same program by hand and reading its first line.
/// Uses the default `restart_delay` (1 s, so a delay of 0.5..1 s with jitter).
#[tokio::test]
async fn restart_latency_figure() {
    let samples: usize = std::env::var("EXEC_LATENCY_SAMPLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let dir = tempfile::tempdir().expect("temp dir");
    let sh = script(
        dir.path(),
        "once.sh",
        "echo '{\"n\": 1}'\n[ -e \"$0.ran\" ] && exec sleep 600\ntouch \"$0.ran\"\nexit 1\n",
    );
    let py = script(
        dir.path(),
        "once.py",
        "import os, sys, time\nprint('{\"n\": 1}', flush=True)\n\
         if os.path.exists(sys.argv[0] + '.ran'): time.sleep(600)\n\
         open(sys.argv[0] + '.ran', 'w').close()\nsys.exit(1)\n",
    );
    for (name, program, path) in [("sh", "sh", &sh), ("python3", "python3", &py)] {
        let mut latency = Vec::new();
        let mut delay = Vec::new();
        let mut peer = Vec::new();
        for _ in 0..samples {
            let _ = std::fs::remove_file(format!("{}.ran", path.display()));
            let (mut dev, stats) = start(
                "latency",
                &format!(
                    "command = [{}, {}]",
                    lit(program),
                    lit(path.to_string_lossy())
                ),
                dir.path(),
            );
            next_batch(&mut dev).await;
            assert_eq!(dev.availability(WAIT).await, Some(false));
            let exited = Instant::now();
            let b = next_batch(&mut dev).await;
            latency.push(exited.elapsed());
            assert_eq!(value(&b, "n"), Some(Value::Int(1)));
            delay.push(stats.last_restart_delay());
            dev.stop().await.expect("a clean stop");

            // The peer: the same program started by hand, to its first line.
            let t = Instant::now();
            let mut child = tokio::process::Command::new(program)
                .arg(path)
                .env("PYTHONUNBUFFERED", "1")
                .stdout(std::process::Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .expect("spawn");
            let out = child.stdout.take().expect("stdout");
            let mut first = String::new();
            tokio::time::timeout(WAIT, tokio::io::BufReader::new(out).read_line(&mut first))
                .await
                .expect("a first line in time")
                .expect("read");
            peer.push(t.elapsed());
            assert_eq!(first.trim(), "{\"n\": 1}");
            child.kill().await.expect("kill the peer");
        }
        for (l, d) in latency.iter().zip(&delay) {
            assert!(l >= d, "a restart never comes before its back-off delay");
        }
        let med = |v: &mut Vec<Duration>| {
            v.sort();
            v[v.len() / 2]
        };
        let overhead: Vec<Duration> = latency.iter().zip(&delay).map(|(l, d)| *l - *d).collect();
        let (l, d, o, p) = (
            med(&mut latency.clone()),
            med(&mut delay.clone()),
            med(&mut overhead.clone()),
            med(&mut peer.clone()),
        );
        println!(
            "restart latency [{name}], median of {samples}: exit -> first reading {l:?} \
             (back-off delay {d:?}, rest {o:?}); plain spawn -> first line {p:?}; \
             latency/peer {:.1}x, (latency - delay)/peer {:.2}x",
            l.as_secs_f64() / p.as_secs_f64(),
            o.as_secs_f64() / p.as_secs_f64()
        );
    }
}

#[tokio::test]
async fn every_line_printed_before_an_exit_is_published_first() {
    const LINES: i64 = 20_000;
    let dir = tempfile::tempdir().expect("temp dir");
    let s = script(
        dir.path(),
        "burst.py",
        &format!(
            "import sys\nfor i in range({LINES}):\n    sys.stdout.write('{{\"n\": %d}}\\n' % i)\n"
        ),
    );
    let (mut dev, _stats) = start(
        "burst",
        &format!("command = [\"python3\", {}]", lit(s.to_string_lossy())),
        dir.path(),
    );
    assert_eq!(dev.availability(WAIT).await, Some(true));
    let mut expected = 0;
    loop {
        match dev.next(WAIT).await.expect("events until offline") {
            sensorgate_api::testing::Event::Readings(b) => {
                assert_eq!(value(&b, "n"), Some(Value::Int(expected)), "in order");
                expected += 1;
            }
            sensorgate_api::testing::Event::Availability(online) => {
                assert!(!online);
                break;
            }
        }
    }
    assert_eq!(expected, LINES, "all lines before the offline");
    dev.stop().await.expect("a clean stop");
}
