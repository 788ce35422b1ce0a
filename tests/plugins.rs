//! The serial, exec and 1-wire plugins through the real daemon, as a user wires them:
//! a socat pty for the serial port, a Python script for exec, a folder laid out like
//! /sys/bus/w1/devices for 1-wire; a real MQTT subscriber checks topics and payloads.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const T: Duration = Duration::from_secs(15);

/// A socat pty pair (`dev` for the daemon, `peer` for the test), killed by PID on drop.
struct Pty {
    child: Child,
    dev: PathBuf,
    peer: PathBuf,
}

impl Pty {
    fn start(dir: &Path) -> Pty {
        let (dev, peer) = (dir.join("tty-dev"), dir.join("tty-peer"));
        let child = Command::new("socat")
            .arg(format!("pty,raw,echo=0,link={}", dev.display()))
            .arg(format!("pty,raw,echo=0,link={}", peer.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("socat is installed (tests/run.sh installs it)");
        let deadline = Instant::now() + T;
        while !(dev.exists() && peer.exists()) {
            assert!(Instant::now() < deadline, "socat made no ptys");
            std::thread::sleep(Duration::from_millis(20));
        }
        Pty { child, dev, peer }
    }
}

impl Drop for Pty {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn w1_sensor(root: &Path, id: &str, millis: i64) {
    let d = root.join(id);
    std::fs::create_dir_all(&d).expect("sensor dir");
    std::fs::write(
        d.join("w1_slave"),
        format!("72 01 4b 46 7f ff 0e 10 57 : crc=57 YES\n72 01 4b 46 7f ff 0e 10 57 t={millis}\n"),
    )
    .expect("w1_slave");
}

fn value(m: &Msg) -> serde_json::Value {
    reading(&m.payload)
        .get("value")
        .cloned()
        .unwrap_or(serde_json::Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serial_exec_and_onewire_devices_publish_the_contract() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let pty = Pty::start(tmp.path());
    let w1 = tmp.path().join("w1");
    std::fs::create_dir_all(w1.join("w1_bus_master1")).expect("w1 root");
    w1_sensor(&w1, "28-0316a2794bff", 21_125);
    w1_sensor(&w1, "28-0000075d6b2a", -3_500);
    let script = tmp.path().join("sensor.py");
    std::fs::write(
        &script,
        "import json, sys, time\n\
         i = 0\n\
         while True:\n\
         \x20   print(json.dumps({'temperature': 20.5 + i, 'humidity': 40}))\n\
         \x20   print(json.dumps({'point': 'door', 'value': True}))\n\
         \x20   sys.stdout.flush()\n\
         \x20   i += 1\n\
         \x20   time.sleep(0.2)\n",
    )
    .expect("script");

    let s = Setup::new(&format!(
        r#"
[[device]]
name = "weather"
plugin = "serial"
port = "{port}"
format = "kv"

[[device.point]]
name = "temperature"
key = "T"
unit = "°C"

[[device]]
name = "garden"
plugin = "exec"
command = ["python3", "{script}"]

[[device]]
name = "heating"
plugin = "onewire"
root = "{w1}"
poll_interval = "500ms"

[[device.point]]
name = "boiler_flow"
sensor = "28-0316a2794bff"
"#,
        port = pty.dev.display(),
        script = script.display(),
        w1 = w1.display(),
    ));

    // `check` shows the three devices.
    let (ok, out, err) = sensorgate(&["check", "--config", s.config().to_str().expect("utf8")]);
    assert!(ok, "check: {err}");
    for name in ["weather", "garden", "heating", "boiler_flow"] {
        assert!(out.contains(name), "{name} in:\n{out}");
    }

    let mut d = s.start();
    let p = s.prefix.clone();
    let sub = Sub::connect(s.addr(), "plugins", &format!("{p}/#")).await;

    // Serial: a line written on the other end of the pty.
    let mut peer = std::fs::OpenOptions::new()
        .write(true)
        .open(&pty.peer)
        .expect("open the pty's peer end");
    let weather = format!("{p}/weather/temperature");
    let deadline = Instant::now() + T;
    let got = loop {
        peer.write_all(b"T=21.5,H=40,garbage\n")
            .and_then(|_| peer.write_all(b"T=21.5,H=40\n"))
            .expect("write a line");
        if let Some(m) = sub
            .wait_for(Duration::from_millis(300), |m| m.topic == weather)
            .await
        {
            break m;
        }
        assert!(
            Instant::now() < deadline,
            "no serial reading:\n{}",
            d.log_text()
        );
    };
    let r = reading(&got.payload);
    assert_eq!(r["value"], 21.5);
    assert_eq!(r["unit"], "°C");
    assert!(is_contract_ts(r["ts"].as_str().expect("ts")), "{r:?}");
    let h = sub
        .wait_for(T, |m| m.topic == format!("{p}/weather/h"))
        .await
        .expect("an unlisted key is published under its own name");
    assert_eq!(value(&h), 40);

    // Exec: both object forms.
    let t = sub
        .wait_for(T, |m| m.topic == format!("{p}/garden/temperature"))
        .await
        .unwrap_or_else(|| panic!("no exec reading:\n{}", d.log_text()));
    assert!(value(&t).is_number(), "{t:?}");
    let door = sub
        .wait_for(T, |m| m.topic == format!("{p}/garden/door"))
        .await
        .expect("the point/value form");
    assert_eq!(value(&door), true);
    assert!(sub
        .wait_for(T, |m| m.topic == format!("{p}/garden/availability")
            && m.payload == "online")
        .await
        .is_some());

    // 1-wire: the listed sensor under its alias, °C as a number; the unlisted one not.
    let flow = sub
        .wait_for(T, |m| m.topic == format!("{p}/heating/boiler_flow"))
        .await
        .unwrap_or_else(|| panic!("no 1-wire reading:\n{}", d.log_text()));
    assert_eq!(value(&flow), 21.125);
    assert_eq!(reading(&flow.payload)["unit"], "°C");
    // The 85 °C power-on value is never published.
    w1_sensor(&w1, "28-0316a2794bff", 85_000);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let flows: Vec<serde_json::Value> = sub
        .messages()
        .iter()
        .filter(|m| m.topic == format!("{p}/heating/boiler_flow"))
        .map(value)
        .collect();
    assert!(
        flows.iter().all(|v| *v == 21.125),
        "only good values: {flows:?}"
    );
    assert!(!sub
        .messages()
        .iter()
        .any(|m| m.topic.contains("28-0000075d6b2a")));

    assert_eq!(d.stop().code(), Some(0));
    // The exec child is gone with the daemon.
    let script = script.to_str().expect("utf8").to_string();
    let left: Vec<String> = std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(&script))
        .collect();
    assert!(
        left.is_empty(),
        "the exec child outlived the daemon: {left:?}"
    );
}
