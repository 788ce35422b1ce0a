//! Test harness: the real `sensorgate` binary on free loopback ports, real MQTT clients.
//! Every wait has a timeout; every process started here is stopped by its PID.

#![allow(dead_code)]

pub mod pki;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

pub const BIN: &str = env!("CARGO_BIN_EXE_sensorgate");

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

/// A temp folder with a config file in it.
pub struct Setup {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub prefix: String,
}

impl Setup {
    /// `body` is added after a `[gateway]` and `[broker]` section made for this test.
    pub fn new(body: &str) -> Setup {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let prefix = format!("t{}", port);
        let s = Setup { dir, port, prefix };
        s.write(body);
        s
    }

    pub fn write(&self, body: &str) {
        let text = format!(
            "[gateway]\nid = \"test\"\ntopic_prefix = \"{}\"\nstate_dir = \"{}\"\n\n[broker]\nlisten = \"127.0.0.1:{}\"\n{}",
            self.prefix,
            self.state_dir().display(),
            self.port,
            body
        );
        std::fs::write(self.config(), text).expect("write config");
    }

    pub fn config(&self) -> PathBuf {
        self.dir.path().join("sensorgate.toml")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn start(&self) -> Daemon {
        Daemon::start(&self.config(), self.addr(), self.dir.path())
    }
}

/// A running `sensorgate run`.
pub struct Daemon {
    child: Option<Child>,
    pub log: PathBuf,
}

impl Daemon {
    pub fn start(config: &Path, addr: SocketAddr, dir: &Path) -> Daemon {
        let n = std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0);
        let log = dir.join(format!("daemon-{n}.log"));
        let err = std::fs::File::create(&log).expect("log file");
        let child = Command::new(BIN)
            .args(["--log-level", "debug", "run", "--config"])
            .arg(config)
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .expect("spawn sensorgate");
        let mut d = Daemon {
            child: Some(child),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        // Any CONNACK: with a password file the probe's anonymous login is refused.
        while sensorgate::broker::mqtt_connack(addr, 4).is_none() {
            if let Some(status) = d.try_status() {
                panic!("sensorgate exited early ({status}):\n{}", d.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "broker not ready on {addr}:\n{}",
                d.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        d
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn try_status(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    pub fn signal(&self, sig: i32) {
        let pid = self.pid();
        if pid > 0 {
            // SAFETY: kill(2) on the PID of a child this harness started and has not reaped.
            unsafe {
                libc::kill(pid, sig);
            }
        }
    }

    /// Wait for the process to exit, up to `limit`.
    pub fn wait(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.try_status() {
                self.child = None;
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then the exit status (SIGKILL and a panic if it does not stop in time).
    pub fn stop(&mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        match self.wait(Duration::from_secs(15)) {
            Some(s) => s,
            None => {
                self.signal(libc::SIGKILL);
                let _ = self.wait(Duration::from_secs(5));
                panic!("sensorgate did not stop on SIGTERM:\n{}", self.log_text());
            }
        }
    }

    /// SIGKILL: no clean-up at all.
    pub fn kill(&mut self) {
        self.signal(libc::SIGKILL);
        assert!(
            self.wait(Duration::from_secs(10)).is_some(),
            "SIGKILL ignored?"
        );
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A received message.
#[derive(Debug, Clone)]
pub struct Msg {
    pub topic: String,
    pub payload: String,
    pub retain: bool,
}

/// A real MQTT client (rumqttc) that records what it receives.
pub struct Sub {
    pub client: AsyncClient,
    got: Arc<Mutex<Vec<Msg>>>,
    connected: Arc<Mutex<Option<bool>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Sub {
    /// Connect to `addr` and subscribe to `filter` (QoS 0); waits for the SUBACK.
    pub async fn connect(addr: SocketAddr, id: &str, filter: &str) -> Sub {
        let s = Sub::connect_only(addr, id).await;
        assert_eq!(
            *s.connected.lock().unwrap(),
            Some(true),
            "{id} not connected"
        );
        s.client
            .subscribe(filter, QoS::AtMostOnce)
            .await
            .expect("subscribe");
        // The SUBACK is not surfaced separately; a short settle is enough for loopback,
        // and callers wait on what they expect with a timeout anyway.
        tokio::time::sleep(Duration::from_millis(100)).await;
        s
    }

    /// Connect; `connected()` tells whether a CONNACK came within 5 s.
    pub async fn connect_only(addr: SocketAddr, id: &str) -> Sub {
        let mut opts = MqttOptions::new(id, addr.ip().to_string(), addr.port());
        opts.set_keep_alive(Duration::from_secs(30));
        opts.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut events) = AsyncClient::new(opts, 64);
        let got: Arc<Mutex<Vec<Msg>>> = Arc::default();
        let connected: Arc<Mutex<Option<bool>>> = Arc::default();
        let (g, c) = (got.clone(), connected.clone());
        let task = tokio::spawn(async move {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => *c.lock().unwrap() = Some(true),
                    Ok(Event::Incoming(Packet::Publish(p))) => g.lock().unwrap().push(Msg {
                        topic: p.topic.clone(),
                        payload: String::from_utf8_lossy(&p.payload).into_owned(),
                        retain: p.retain,
                    }),
                    Ok(_) => {}
                    Err(_) => {
                        *c.lock().unwrap() = Some(false);
                        return;
                    }
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(5);
        while connected.lock().unwrap().is_none() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Sub {
            client,
            got,
            connected,
            task,
        }
    }

    /// Is the connection up (CONNACK received and not closed since)?
    pub fn connected(&self) -> bool {
        *self.connected.lock().unwrap() == Some(true)
    }

    pub fn messages(&self) -> Vec<Msg> {
        self.got.lock().unwrap().clone()
    }

    /// Wait until a received message satisfies `pred`; returns it.
    pub async fn wait_for(&self, limit: Duration, pred: impl Fn(&Msg) -> bool) -> Option<Msg> {
        self.wait_for_after(0, limit, pred).await
    }

    /// Like `wait_for`, among the messages after the first `skip`.
    pub async fn wait_for_after(
        &self,
        skip: usize,
        limit: Duration,
        pred: impl Fn(&Msg) -> bool,
    ) -> Option<Msg> {
        wait_msg(&self.got, skip, limit, pred).await
    }

    /// Wait until more than `n` messages have arrived.
    pub async fn wait_more_than(&self, n: usize, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.got.lock().unwrap().len() > n {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    /// Wait until the connection drops.
    pub async fn wait_closed(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if *self.connected.lock().unwrap() == Some(false) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }
}

impl Drop for Sub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Wait until a message after the first `skip` in `got` satisfies `pred`.
async fn wait_msg(
    got: &Mutex<Vec<Msg>>,
    skip: usize,
    limit: Duration,
    pred: impl Fn(&Msg) -> bool,
) -> Option<Msg> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(m) = got.lock().unwrap().iter().skip(skip).find(|m| pred(m)) {
            return Some(m.clone());
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Run `sensorgate` with `args`; returns (exit success, stdout, stderr).
pub fn sensorgate(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .output()
        .expect("run sensorgate");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Parse a reading payload: the JSON object and its `ts`.
pub fn reading(payload: &str) -> serde_json::Map<String, serde_json::Value> {
    match serde_json::from_str::<serde_json::Value>(payload) {
        Ok(serde_json::Value::Object(m)) => m,
        other => panic!("not a JSON object: {payload:?} ({other:?})"),
    }
}

/// Is `ts` RFC 3339 UTC with exactly three fractional digits and `Z`?
pub fn is_contract_ts(ts: &str) -> bool {
    let b = ts.as_bytes();
    b.len() == 24
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && b[19] == b'.'
        && b[23] == b'Z'
        && b.iter()
            .enumerate()
            .all(|(i, c)| [4, 7, 10, 13, 16, 19, 23].contains(&i) || c.is_ascii_digit())
}

/// Debian's mosquitto as the upstream (cloud) broker, on a free loopback port, with
/// persistence, restartable on the same port.
pub struct Mosquitto {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl Mosquitto {
    pub fn start(dir: &Path) -> Mosquitto {
        Mosquitto::start_with(dir, "")
    }

    /// Like `start`, with `extra` lines appended to mosquitto.conf after the plain
    /// listener's (another `listener` with its TLS settings, say). Readiness is checked on
    /// the plain listener, `port`.
    pub fn start_with(dir: &Path, extra: &str) -> Mosquitto {
        let mut m = Mosquitto {
            port: free_port(),
            dir: dir.join("mosquitto"),
            child: None,
        };
        std::fs::create_dir_all(&m.dir).expect("mosquitto dir");
        std::fs::write(
            m.dir.join("mosquitto.conf"),
            format!(
                "listener {} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {}/\nmax_queued_messages 100000\n{extra}",
                m.port,
                m.dir.display()
            ),
        )
        .expect("mosquitto.conf");
        m.up();
        m
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// mosquitto's own log (stderr of every start), for failure messages.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.join("mosquitto.log")).unwrap_or_default()
    }

    /// Start (again) on the same port; waits until it accepts MQTT.
    pub fn up(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("mosquitto.log"))
            .expect("log");
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(self.dir.join("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("mosquitto is installed (tests/run.sh installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !sensorgate::broker::mqtt_ping(self.addr(), 4) {
            assert!(Instant::now() < deadline, "mosquitto did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM (mosquitto saves its persistence file) and wait.
    pub fn down(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on the PID of our own child.
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while c.try_wait().ok().flatten().is_none() {
                if Instant::now() > deadline {
                    let _ = c.kill();
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = c.wait();
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// An upstream subscriber with a persistent session (QoS 1) that reconnects by itself,
/// so it sees everything across broker restarts.
pub struct Collector {
    got: Arc<Mutex<Vec<Msg>>>,
    /// SUBACKs received: one per (re)connection.
    subacks: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
    pub client: AsyncClient,
}

impl Collector {
    pub async fn start(addr: SocketAddr, id: &str, filter: &str) -> Collector {
        let mut opts = MqttOptions::new(id, addr.ip().to_string(), addr.port());
        opts.set_keep_alive(Duration::from_secs(5));
        opts.set_clean_session(false);
        let (client, mut events) = AsyncClient::new(opts, 64);
        let got: Arc<Mutex<Vec<Msg>>> = Arc::default();
        let g = got.clone();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let mut ready = Some(ready_tx);
        let subacks: Arc<std::sync::atomic::AtomicUsize> = Arc::default();
        let acks = subacks.clone();
        let sub = client.clone();
        let filter = filter.to_string();
        let task = tokio::spawn(async move {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = sub.try_subscribe(filter.clone(), QoS::AtLeastOnce);
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        acks.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        if let Some(r) = ready.take() {
                            let _ = r.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => g.lock().unwrap().push(Msg {
                        topic: p.topic.clone(),
                        payload: String::from_utf8_lossy(&p.payload).into_owned(),
                        retain: p.retain,
                    }),
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), ready_rx)
            .await
            .expect("collector subscribed")
            .expect("collector task");
        Collector {
            got,
            subacks,
            task,
            client,
        }
    }

    /// How many times it has subscribed (once per connection).
    pub fn subscriptions(&self) -> usize {
        self.subacks.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Wait until it has subscribed more than `seen` times: reconnected after a broker
    /// restart.
    pub async fn wait_resubscribed(&self, seen: usize, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while self.subscriptions() <= seen {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }

    pub fn messages(&self) -> Vec<Msg> {
        self.got.lock().unwrap().clone()
    }

    /// Integer `value`s received on `topic`, in arrival order.
    pub fn values(&self, topic: &str) -> Vec<i64> {
        self.messages()
            .iter()
            .filter(|m| m.topic == topic)
            .filter_map(|m| {
                serde_json::from_str::<serde_json::Value>(&m.payload)
                    .ok()?
                    .get("value")?
                    .as_i64()
            })
            .collect()
    }

    /// Wait until a value `>= v` arrived on `topic`.
    pub async fn wait_value(&self, topic: &str, v: i64, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.values(topic).iter().any(|x| *x >= v) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// Wait until the values on `topic` reach `high` with none missing below it (live
    /// readings go first after a reconnect, the backlog follows).
    pub async fn wait_complete(&self, topic: &str, high: i64, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            let v = self.values(topic);
            if v.iter().any(|x| *x >= high) && gaps_and_duplicates(&v).0.is_empty() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    pub async fn wait_for(&self, limit: Duration, pred: impl Fn(&Msg) -> bool) -> Option<Msg> {
        self.wait_for_after(0, limit, pred).await
    }

    /// Like `wait_for`, among the messages after the first `skip`.
    pub async fn wait_for_after(
        &self,
        skip: usize,
        limit: Duration,
        pred: impl Fn(&Msg) -> bool,
    ) -> Option<Msg> {
        wait_msg(&self.got, skip, limit, pred).await
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Gaps in a counter sequence (values missing between the smallest and largest seen),
/// and how many values came more than once.
pub fn gaps_and_duplicates(values: &[i64]) -> (Vec<i64>, usize) {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    let before = sorted.len();
    sorted.dedup();
    let dups = before - sorted.len();
    let mut gaps = Vec::new();
    for w in sorted.windows(2) {
        gaps.extend(w[0] + 1..w[1]);
    }
    (gaps, dups)
}

/// [`paho`] from async code: runs on a blocking thread, with its own copy of `args`.
pub async fn paho_async(addr: SocketAddr, args: &[&str]) -> Vec<serde_json::Value> {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        paho(addr, &args)
    })
    .await
    .expect("paho")
}

/// Run `tests/paho_client.py` against `addr` with `args`; returns its JSON lines (see the
/// script). The process is killed if it runs over 60 s.
pub fn paho(addr: SocketAddr, args: &[&str]) -> Vec<serde_json::Value> {
    let out = tempfile::NamedTempFile::new().expect("temp file");
    let mut child = Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/paho_client.py"))
        .arg(addr.ip().to_string())
        .arg(addr.port().to_string())
        .args(args)
        .stdout(out.reopen().expect("reopen"))
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 with paho-mqtt (tests/run.sh installs it)");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("paho_client.py {args:?} did not finish in 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    std::fs::read_to_string(out.path())
        .expect("paho output")
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

/// The first value of `key` in paho lines.
pub fn paho_get<'a>(lines: &'a [serde_json::Value], key: &str) -> Option<&'a serde_json::Value> {
    lines.iter().find_map(|l| l.get(key))
}

/// The topics of the messages in paho lines, in order.
pub fn paho_topics(lines: &[serde_json::Value]) -> Vec<String> {
    lines
        .iter()
        .filter_map(|l| l.get("msg").and_then(|t| t.as_str()).map(str::to_string))
        .collect()
}

/// A password file made by the real `mosquitto_passwd` with `users` (name, password).
pub fn mosquitto_passwd(path: &Path, users: &[(&str, &str)]) {
    for (i, (user, pass)) in users.iter().enumerate() {
        let mut cmd = Command::new("mosquitto_passwd");
        if i == 0 {
            cmd.arg("-c");
        }
        let st = cmd
            .arg("-b")
            .arg(path)
            .arg(user)
            .arg(pass)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("mosquitto_passwd (package mosquitto)");
        assert!(st.success(), "mosquitto_passwd failed");
    }
}
