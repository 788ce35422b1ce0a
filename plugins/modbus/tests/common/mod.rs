//! Helpers shared by the tests: a real Modbus device (a tokio-modbus server over a
//! register map, on TCP port 0 or a serial line), and a run of an adapter against a real
//! events channel whose other end plays the daemon.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sensorgate_api::{
    Adapter, AdapterContext, AdapterError, CancellationToken, Command, ConfigError, DeviceEvent,
    DeviceSpec, Plugin, Reading, Value,
};
use sensorgate_modbus::PLUGIN;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_modbus::{ExceptionCode, Request, Response, SlaveRequest};

/// Every wait in the tests is bounded by this.
pub const WAIT: Duration = Duration::from_secs(10);

/// A spec for device `name` polled every `poll` with the plugin keys in `table` (TOML).
pub fn spec(name: &str, poll: Duration, table: &str) -> DeviceSpec {
    DeviceSpec {
        name: name.into(),
        plugin: "modbus".into(),
        poll_interval: poll,
        state_dir: std::env::temp_dir().join("sensorgate-modbus-test-unused"),
        table: toml::from_str(table).expect("test TOML parses"),
    }
}

/// Build a device; panics with the errors if it does not build.
pub fn build(name: &str, poll: Duration, table: &str) -> Box<dyn Adapter> {
    match PLUGIN.build(&spec(name, poll, table)) {
        Ok(a) => a,
        Err(e) => panic!("does not build: {e:?}\n{table}"),
    }
}

/// The errors of building a device from `table`; panics if it builds.
pub fn errors(table: &str) -> Vec<ConfigError> {
    match PLUGIN.build(&spec("d", Duration::from_secs(1), table)) {
        Ok(_) => panic!("built, but should not have:\n{table}"),
        Err(e) => e,
    }
}

/// The registers of one unit id. A register or bit not in a map does not exist: reading
/// it is an "illegal data address" exception, as on a real device.
#[derive(Debug, Default, Clone)]
pub struct Unit {
    pub holding: BTreeMap<u16, u16>,
    pub input: BTreeMap<u16, u16>,
    pub coils: BTreeMap<u16, bool>,
    pub discrete: BTreeMap<u16, bool>,
    /// Never answers (a unit that is off, or a wrong unit id).
    pub silent: bool,
}

impl Unit {
    /// Holding registers from `start` on.
    pub fn holding_at(&mut self, start: u16, words: &[u16]) -> &mut Self {
        for (i, w) in words.iter().enumerate() {
            self.holding.insert(start + i as u16, *w);
        }
        self
    }

    pub fn input_at(&mut self, start: u16, words: &[u16]) -> &mut Self {
        for (i, w) in words.iter().enumerate() {
            self.input.insert(start + i as u16, *w);
        }
        self
    }
}

/// A fake device's state, shared with the test: the units by id, and every request it got.
#[derive(Debug, Default)]
pub struct State {
    pub units: Mutex<HashMap<u8, Unit>>,
    /// Every request, in order, with its unit id.
    pub log: Mutex<Vec<(u8, Request<'static>)>>,
    /// Requests being answered right now, and the most there ever were at once.
    in_flight: AtomicUsize,
    pub max_in_flight: AtomicUsize,
    /// Connections accepted (TCP).
    pub connections: AtomicUsize,
    /// How long each answer takes.
    pub answer_time: Mutex<Duration>,
}

impl State {
    pub fn new(units: impl IntoIterator<Item = (u8, Unit)>) -> Arc<State> {
        Arc::new(State {
            units: Mutex::new(units.into_iter().collect()),
            ..State::default()
        })
    }

    pub fn with_unit<R>(&self, id: u8, f: impl FnOnce(&mut Unit) -> R) -> R {
        let mut units = self.units.lock().expect("units lock");
        f(units.entry(id).or_default())
    }

    pub fn requests(&self) -> Vec<(u8, Request<'static>)> {
        self.log.lock().expect("log lock").clone()
    }

    pub fn clear_log(&self) {
        self.log.lock().expect("log lock").clear();
    }

    /// Answer one request as the device would; `None` = stay silent.
    fn answer(&self, req: SlaveRequest<'static>) -> Result<Option<Response>, ExceptionCode> {
        self.log
            .lock()
            .expect("log lock")
            .push((req.slave, req.request.clone()));
        let mut units = self.units.lock().expect("units lock");
        let Some(unit) = units.get_mut(&req.slave) else {
            return Ok(None);
        };
        if unit.silent {
            return Ok(None);
        }
        fn words(map: &BTreeMap<u16, u16>, a: u16, n: u16) -> Result<Vec<u16>, ExceptionCode> {
            (a..a.saturating_add(n))
                .map(|i| {
                    map.get(&i)
                        .copied()
                        .ok_or(ExceptionCode::IllegalDataAddress)
                })
                .collect()
        }
        fn bits(map: &BTreeMap<u16, bool>, a: u16, n: u16) -> Result<Vec<bool>, ExceptionCode> {
            (a..a.saturating_add(n))
                .map(|i| {
                    map.get(&i)
                        .copied()
                        .ok_or(ExceptionCode::IllegalDataAddress)
                })
                .collect()
        }
        let r = match req.request {
            Request::ReadHoldingRegisters(a, n) => {
                Response::ReadHoldingRegisters(words(&unit.holding, a, n)?)
            }
            Request::ReadInputRegisters(a, n) => {
                Response::ReadInputRegisters(words(&unit.input, a, n)?)
            }
            Request::ReadCoils(a, n) => Response::ReadCoils(bits(&unit.coils, a, n)?),
            Request::ReadDiscreteInputs(a, n) => {
                Response::ReadDiscreteInputs(bits(&unit.discrete, a, n)?)
            }
            Request::WriteSingleRegister(a, w) => {
                let slot = unit
                    .holding
                    .get_mut(&a)
                    .ok_or(ExceptionCode::IllegalDataAddress)?;
                *slot = w;
                Response::WriteSingleRegister(a, w)
            }
            Request::WriteMultipleRegisters(a, ws) => {
                words(&unit.holding, a, ws.len() as u16)?;
                for (i, w) in ws.iter().enumerate() {
                    unit.holding.insert(a + i as u16, *w);
                }
                Response::WriteMultipleRegisters(a, ws.len() as u16)
            }
            Request::WriteSingleCoil(a, b) => {
                let slot = unit
                    .coils
                    .get_mut(&a)
                    .ok_or(ExceptionCode::IllegalDataAddress)?;
                *slot = b;
                Response::WriteSingleCoil(a, b)
            }
            _ => return Err(ExceptionCode::IllegalFunction),
        };
        Ok(Some(r))
    }
}

/// The tokio-modbus service over a [`State`].
#[derive(Clone)]
pub struct Service(pub Arc<State>);

impl tokio_modbus::server::Service for Service {
    type Request = SlaveRequest<'static>;
    type Response = Option<Response>;
    type Exception = ExceptionCode;
    type Future = Pin<Box<dyn Future<Output = Result<Option<Response>, ExceptionCode>> + Send>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        let state = self.0.clone();
        Box::pin(async move {
            let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            state.max_in_flight.fetch_max(now, Ordering::SeqCst);
            let delay = *state.answer_time.lock().expect("lock");
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let answer = state.answer(req);
            state.in_flight.fetch_sub(1, Ordering::SeqCst);
            answer
        })
    }
}

/// A Modbus TCP server on 127.0.0.1 over `state`; stopped when dropped.
pub struct TcpDevice {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl TcpDevice {
    /// On a free port.
    pub async fn start(state: Arc<State>) -> TcpDevice {
        TcpDevice::start_on("127.0.0.1:0".parse().expect("addr"), state).await
    }

    /// On `addr` (again, after a stop).
    pub async fn start_on(addr: SocketAddr, state: Arc<State>) -> TcpDevice {
        let listener = TcpListener::bind(addr).await.expect("bind a test port");
        let addr = listener.local_addr().expect("local addr");
        let server = tokio_modbus::server::tcp::Server::new(listener);
        let task = tokio::spawn(async move {
            let on_connected = |stream, _peer| {
                let state = state.clone();
                async move {
                    state.connections.fetch_add(1, Ordering::SeqCst);
                    Ok(Some((Service(state), stream)))
                }
            };
            let _ = server.serve(&on_connected, |_e| {}).await;
        });
        TcpDevice { addr, task }
    }

    /// Stop listening and drop every connection.
    pub async fn stop(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

impl Drop for TcpDevice {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the fake daemon saw.
#[derive(Debug)]
pub enum Event {
    Readings(Vec<Reading>),
    Online(bool),
}

/// An adapter running in a task, with the daemon's side of its channels.
pub struct Running {
    events: mpsc::Receiver<DeviceEvent>,
    commands: mpsc::Sender<Command>,
    cancel: CancellationToken,
    task: JoinHandle<Result<(), AdapterError>>,
}

impl Running {
    /// Run `adapter` as device `device`.
    pub fn start(mut adapter: Box<dyn Adapter>, device: &str) -> Running {
        let (events_tx, events) = mpsc::channel(64);
        let (commands, commands_rx) = mpsc::channel(8);
        let cancel = CancellationToken::new();
        let mut ctx = AdapterContext::new(
            Arc::from(device),
            Duration::from_secs(1),
            std::env::temp_dir(),
            cancel.clone(),
            events_tx,
            commands_rx,
        );
        let task = tokio::spawn(async move { adapter.run(&mut ctx).await });
        Running {
            events,
            commands,
            cancel,
            task,
        }
    }

    /// The next event; readings are acknowledged at once.
    pub async fn next(&mut self) -> Event {
        let event = timeout(WAIT, self.events.recv())
            .await
            .expect("an event within the wait")
            .expect("the adapter is running");
        match event {
            DeviceEvent::Readings { readings, ack } => {
                if let Some(ack) = ack {
                    let _ = ack.send(());
                }
                Event::Readings(readings)
            }
            DeviceEvent::Availability { online, .. } => Event::Online(online),
        }
    }

    /// The next batch of readings, skipping availability changes.
    pub async fn readings(&mut self) -> Vec<Reading> {
        loop {
            if let Event::Readings(r) = self.next().await {
                return r;
            }
        }
    }

    /// Wait until the device is said to be `online`, skipping readings.
    pub async fn until_online(&mut self, online: bool) {
        loop {
            if let Event::Online(o) = self.next().await {
                if o == online {
                    return;
                }
            }
        }
    }

    /// Events in the next `d`, without waiting for more.
    pub async fn events_for(&mut self, d: Duration) -> Vec<Event> {
        let mut out = Vec::new();
        let end = tokio::time::Instant::now() + d;
        while let Ok(Some(event)) = tokio::time::timeout_at(end, self.events.recv()).await {
            out.push(match event {
                DeviceEvent::Readings { readings, ack } => {
                    if let Some(ack) = ack {
                        let _ = ack.send(());
                    }
                    Event::Readings(readings)
                }
                DeviceEvent::Availability { online, .. } => Event::Online(online),
            });
        }
        out
    }

    /// A `/set` from MQTT.
    pub async fn set(&self, point: &str, value: serde_json::Value) {
        self.commands
            .send(Command {
                point: point.to_string(),
                value,
            })
            .await
            .expect("the adapter takes commands");
    }

    /// Cancel the run and return what `run` returned.
    pub async fn stop(mut self) -> Result<(), AdapterError> {
        self.cancel.cancel();
        // Keep draining so that a publish in progress is not stuck.
        let drain = async {
            while let Some(event) = self.events.recv().await {
                if let DeviceEvent::Readings { ack: Some(ack), .. } = event {
                    let _ = ack.send(());
                }
            }
        };
        let (result, _) = timeout(WAIT, async { tokio::join!(&mut self.task, drain) })
            .await
            .expect("run returns after the cancel");
        result.expect("the adapter task does not panic")
    }
}

/// The values of a batch, by point name.
pub fn values(readings: &[Reading]) -> BTreeMap<String, Value> {
    readings
        .iter()
        .map(|r| (r.point.to_string(), r.value.clone()))
        .collect()
}

/// The path of a file next to the crate (sample.toml).
pub fn crate_file(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(name)
}
