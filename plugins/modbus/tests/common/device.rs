//! A fake Modbus device for the tests: the registers of its unit ids, a tokio-modbus
//! service over them that logs and timestamps every request, and a TCP server on
//! 127.0.0.1. Only std, tokio and tokio-modbus (the `tcp-server` feature): the daemon's
//! end to end test (`tests/modbus.rs` of the workspace) includes this file too.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_modbus::{ExceptionCode, Request, Response, SlaveRequest};

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
    /// Per request: when the service got it (decoded) and when it had its answer (before
    /// encoding and sending it). The peer's own time is the difference; what lies
    /// between an answer and the next request is the client's (benches/rtu_wire.rs).
    pub times: Mutex<Vec<(std::time::Instant, std::time::Instant)>>,
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

    /// Every request, in order, without the unit ids.
    pub fn request_list(&self) -> Vec<Request<'static>> {
        self.requests().into_iter().map(|(_, r)| r).collect()
    }

    /// The write requests (functions 5, 6 and 16), in order.
    pub fn writes(&self) -> Vec<Request<'static>> {
        let mut requests = self.request_list();
        requests.retain(|r| {
            matches!(
                r,
                Request::WriteSingleRegister(..)
                    | Request::WriteMultipleRegisters(..)
                    | Request::WriteSingleCoil(..)
            )
        });
        requests
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
            let got = std::time::Instant::now();
            let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            state.max_in_flight.fetch_max(now, Ordering::SeqCst);
            let delay = *state.answer_time.lock().expect("lock");
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let answer = state.answer(req);
            state.in_flight.fetch_sub(1, Ordering::SeqCst);
            let answered = std::time::Instant::now();
            state
                .times
                .lock()
                .expect("times lock")
                .push((got, answered));
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
