//! One bus, one talker: a task per physical line (a serial port, or a TCP peer) that owns
//! the connection and sends one request at a time, with the bus timing.
//!
//! Devices find their bus in a process-wide registry by [`Transport::bus_key`]: all
//! devices on `/dev/ttyUSB0` (several unit ids on one RS-485 line is the normal case), or
//! on one TCP address (a TCP-to-RTU gateway that takes one connection), share one task,
//! so their requests never overlap on the wire. The task lives as long as some device
//! holds its [`Bus`]; the last one dropped closes the port.
//!
//! Every call has a timeout (tokio-modbus has none: a silent unit would hang forever).
//! Before each request the task waits for the line to be quiet: `delay_between_requests`
//! after the last answer, `delay_on_unit_switch` when the unit id changes, and on RTU at
//! least the 3.5 characters of silence the framing needs. A transport failure drops the
//! connection (TCP stream or serial port); the next request opens it again, so a port
//! that disappears is reopened when it comes back.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_modbus::client::{Client, Context};
use tokio_modbus::prelude::SlaveContext;
use tokio_modbus::{ExceptionCode, Request, Response, Slave};

use crate::config::{Parity, Serial, Transport};

/// How one request is timed; each device brings its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// The longest wait for an answer (and for a TCP connect).
    pub timeout: Duration,
    /// Quiet time after the last answer on this bus before this request.
    pub delay_between_requests: Duration,
    /// Quiet time before this request when the last one went to another unit id.
    pub delay_on_unit_switch: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            timeout: crate::config::DEFAULT_TIMEOUT,
            delay_between_requests: Duration::ZERO,
            delay_on_unit_switch: Duration::ZERO,
        }
    }
}

/// Why a request got no answer: the transport's problem (retry, back-off, offline).
/// An exception response is an answer, not a `BusError`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BusError {
    #[error("no answer within {}", humantime::format_duration(*.0))]
    Timeout(Duration),
    #[error("cannot open {target}: {message}")]
    Connect { target: String, message: String },
    #[error("I/O error: {0}")]
    Io(String),
    #[error("garbled answer: {0}")]
    Protocol(String),
    #[error("another device on {key} opened it with other line settings ({theirs}); devices on one port must agree on baud, parity, data and stop bits")]
    Settings { key: String, theirs: String },
    #[error("the bus task stopped")]
    Stopped,
}

/// What a request comes back with: the response, a Modbus exception, or no answer.
pub type Answer = Result<Result<Response, ExceptionCode>, BusError>;

struct Job {
    unit: u8,
    request: Request<'static>,
    timing: Timing,
    reply: oneshot::Sender<Answer>,
}

/// A handle on a bus task. Cloning shares the task; dropping the last handle ends it.
#[derive(Clone)]
pub struct Bus {
    inner: Arc<BusInner>,
}

struct BusInner {
    key: String,
    transport: Transport,
    /// Requests in; the task ends when every sender is gone.
    jobs: mpsc::Sender<Job>,
    /// The task, for [`Bus::close`].
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus").field("key", &self.inner.key).finish()
    }
}

/// The buses of this process, by key. Weak: the devices own them.
static REGISTRY: LazyLock<Mutex<HashMap<String, Weak<BusInner>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

impl Bus {
    /// The bus of `transport`, started if no device holds it yet. Must be called inside a
    /// tokio runtime. Fails when the serial port is open with other line settings.
    pub fn get(transport: &Transport) -> Result<Bus, BusError> {
        let key = transport.bus_key();
        let mut map = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, w| w.strong_count() > 0);
        if let Some(inner) = map.get(&key).and_then(Weak::upgrade) {
            if inner.transport != *transport {
                return Err(BusError::Settings {
                    key,
                    theirs: inner.transport.to_string(),
                });
            }
            return Ok(Bus { inner });
        }
        let bus = Bus::start(transport.clone());
        map.insert(key, Arc::downgrade(&bus.inner));
        Ok(bus)
    }

    /// A bus of its own, outside the registry (the CLI, tests).
    pub fn start(transport: Transport) -> Bus {
        let (tx, rx) = mpsc::channel(64);
        let key = transport.bus_key();
        let task = tokio::spawn(run(transport.clone(), rx));
        Bus {
            inner: Arc::new(BusInner {
                key,
                transport,
                jobs: tx,
                task,
            }),
        }
    }

    /// Drop this handle and, if it was the last, wait (2 s at most) until the task has
    /// closed the connection. A serial port is opened exclusively (TIOCEXCL: another
    /// open fails with EBUSY, except for root), so the CLI frees it before it returns.
    pub async fn close(self) {
        let Ok(inner) = Arc::try_unwrap(self.inner) else {
            return; // Other devices still use the bus.
        };
        let BusInner { jobs, task, .. } = inner;
        drop(jobs);
        let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
    }

    /// `tcp://host:port` or `rtu:///dev/ttyUSB0`.
    pub fn key(&self) -> &str {
        &self.inner.key
    }

    /// Send `request` to `unit` when the line is free and wait for its answer. Dropping
    /// the future gives the request up (it is skipped if not yet sent).
    pub async fn call(&self, unit: u8, request: Request<'static>, timing: Timing) -> Answer {
        let (tx, rx) = oneshot::channel();
        let job = Job {
            unit,
            request,
            timing,
            reply: tx,
        };
        self.inner
            .jobs
            .send(job)
            .await
            .map_err(|_| BusError::Stopped)?;
        rx.await.unwrap_or(Err(BusError::Stopped))
    }
}

/// The bus task: one request at a time, in arrival order.
async fn run(transport: Transport, mut jobs: mpsc::Receiver<Job>) {
    let mut line = Line {
        min_gap: match &transport {
            Transport::Rtu(s) => s.frame_gap(),
            _ => Duration::ZERO,
        },
        transport,
        ctx: None,
        last: None,
    };
    while let Some(job) = jobs.recv().await {
        if job.reply.is_closed() {
            continue; // The device gave up waiting (it is stopping).
        }
        let answer = line.serve(job.unit, job.request, job.timing).await;
        let _ = job.reply.send(answer);
    }
    if let Some(mut ctx) = line.ctx.take() {
        let _ = tokio::time::timeout(Duration::from_secs(1), ctx.disconnect()).await;
    }
}

struct Line {
    transport: Transport,
    /// The open connection; `None` until the first request, and after a failure.
    ctx: Option<Context>,
    /// When the last answer (or timeout) ended, and to which unit.
    last: Option<(Instant, u8)>,
    /// The framing's own silence between frames (RTU).
    min_gap: Duration,
}

impl Line {
    async fn serve(&mut self, unit: u8, request: Request<'static>, timing: Timing) -> Answer {
        if self.ctx.is_none() {
            self.ctx = Some(connect(&self.transport, timing.timeout).await?);
        }
        if let Some((at, last_unit)) = self.last {
            let mut wait = self.min_gap.max(timing.delay_between_requests);
            if last_unit != unit {
                wait = wait.max(timing.delay_on_unit_switch);
            }
            quiet_until(at + wait).await;
        }
        let Some(ctx) = self.ctx.as_mut() else {
            return Err(BusError::Stopped);
        };
        ctx.set_slave(Slave(unit));
        let result = tokio::time::timeout(timing.timeout, ctx.call(request)).await;
        self.last = Some((Instant::now(), unit));
        let serial = matches!(self.transport, Transport::Rtu(_));
        match result {
            Ok(Ok(answer)) => Ok(answer),
            Err(_) => {
                // A TCP stream may still carry the late answer: start afresh. A serial
                // line is shared by other units and the next call clears its buffer.
                if !serial {
                    self.ctx = None;
                }
                Err(BusError::Timeout(timing.timeout))
            }
            Ok(Err(tokio_modbus::Error::Transport(e))) => {
                self.ctx = None;
                Err(BusError::Io(e.to_string()))
            }
            Ok(Err(tokio_modbus::Error::Protocol(e))) => {
                if !serial {
                    self.ctx = None;
                }
                Err(BusError::Protocol(e.to_string()))
            }
        }
    }
}

/// Wait until `deadline`, and not much longer. tokio's timer wakes on whole
/// milliseconds, up to one late: after a 1.75 ms frame gap that is a 5 % loss of the
/// line at 115200 baud (benches/rtu_wire.rs). So sleep until a millisecond before, then
/// yield to other tasks until the deadline (at most about 1 ms of such spinning per
/// request; none when the deadline has passed, the common case of a poll loop).
async fn quiet_until(deadline: Instant) {
    const EARLY: Duration = Duration::from_millis(1);
    if let Some(coarse) = deadline.checked_sub(EARLY) {
        if coarse > Instant::now() {
            tokio::time::sleep_until(coarse).await;
        }
    }
    // On the real clock, and never more than EARLY (tokio's clock may be paused).
    let now = Instant::now();
    let end = std::time::Instant::now() + deadline.saturating_duration_since(now).min(EARLY);
    while std::time::Instant::now() < end {
        tokio::task::yield_now().await;
    }
}

/// Open the connection of `transport`.
async fn connect(transport: &Transport, timeout: Duration) -> Result<Context, BusError> {
    match transport {
        Transport::Tcp { address } => {
            let stream = tcp(address, timeout).await?;
            Ok(tokio_modbus::client::tcp::attach(stream))
        }
        Transport::RtuOverTcp { address } => {
            let stream = tcp(address, timeout).await?;
            Ok(tokio_modbus::client::rtu::attach(stream))
        }
        Transport::Rtu(serial) => {
            let port = open_serial(serial).map_err(|e| BusError::Connect {
                target: serial.port.clone(),
                message: e.to_string(),
            })?;
            Ok(tokio_modbus::client::rtu::attach(port))
        }
    }
}

async fn tcp(address: &str, timeout: Duration) -> Result<TcpStream, BusError> {
    let err = |message: String| BusError::Connect {
        target: address.to_string(),
        message,
    };
    let stream = tokio::time::timeout(timeout, TcpStream::connect(address))
        .await
        .map_err(|_| {
            err(format!(
                "no connection within {}",
                humantime::format_duration(timeout)
            ))
        })?
        .map_err(|e| err(e.to_string()))?;
    // Requests are small and answered one by one: don't let Nagle hold them back.
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// Open a serial port with the line settings of `s`.
pub fn open_serial(s: &Serial) -> io::Result<tokio_serial::SerialStream> {
    let builder = tokio_serial::new(&s.port, s.baud)
        .parity(match s.parity {
            Parity::None => tokio_serial::Parity::None,
            Parity::Even => tokio_serial::Parity::Even,
            Parity::Odd => tokio_serial::Parity::Odd,
        })
        .data_bits(match s.data_bits {
            5 => tokio_serial::DataBits::Five,
            6 => tokio_serial::DataBits::Six,
            7 => tokio_serial::DataBits::Seven,
            _ => tokio_serial::DataBits::Eight,
        })
        .stop_bits(match s.stop_bits {
            2 => tokio_serial::StopBits::Two,
            _ => tokio_serial::StopBits::One,
        });
    tokio_serial::SerialStream::open(&builder).map_err(io::Error::from)
}
