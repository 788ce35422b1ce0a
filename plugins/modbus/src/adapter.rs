//! The running Modbus device: a poll loop with per-point intervals, the planned reads on
//! the shared bus, exceptions kept per point, and writes from MQTT.
//!
//! The loop is its own rather than [`sensorgate_api::run_poller`] because points have
//! their own `poll_interval`: it sleeps until the earliest point is due, reads the points
//! due then (merged by the planner), and publishes them. A transport failure (after the
//! device's `retries`) drops the cycle, marks the device offline and retries with the
//! API's [`Backoff`]; `/set` writes are served meanwhile.

use std::borrow::Cow;
use std::time::{Duration, SystemTime};

use sensorgate_api::{
    Adapter, AdapterContext, AdapterError, Backoff, Command, DeviceSpec, PointInfo, Quality,
    Reading,
};
use tokio::time::Instant;
use tokio_modbus::{ExceptionCode, Request, Response};

use crate::bus::{BusError, Timing};
use crate::config::{ModbusConfig, Point};
use crate::plan::{self, Item, Limits, ReadRequest, Table};
use crate::value::{self, from_bytes, to_bytes, ValueError};
use crate::Bus;

/// Points due this close to the cycle's start are read in it too, so that points of
/// different intervals that fall due together stay together.
const SLACK: Duration = Duration::from_millis(20);

/// A Modbus device, built from a checked [`ModbusConfig`].
#[derive(Debug)]
pub struct ModbusAdapter {
    config: ModbusConfig,
    /// The device's `poll_interval`: the default of its points.
    poll_interval: Duration,
    /// Taken from the registry when the adapter runs (it needs the runtime).
    bus: Option<Bus>,
    /// Per point: read alone, because a merged read with it was refused (an exception
    /// such as "illegal data address" for a register in a filled gap).
    solo: Vec<bool>,
    /// Per point: the problem of its last read, logged once per change.
    problem: Vec<Option<String>>,
    /// Per point: the reads that failed with an exception or a bad value.
    failures: Vec<u64>,
}

/// Why a poll cycle stopped.
#[derive(Debug)]
enum CycleError {
    /// The transport failed, retries included: the device is offline.
    Transport(BusError),
    /// The daemon is stopping.
    Cancelled,
}

/// Why a `/set` wrote nothing (or its read-back failed).
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("no point {0:?} on this device")]
    NoSuchPoint(String),
    #[error("point {0:?} is read-only (set writable = true to allow writes)")]
    ReadOnly(String),
    #[error("{0}")]
    Value(#[from] ValueError),
    #[error("{value} is out of range {}..{}", fmt_bound(*.min), fmt_bound(*.max))]
    OutOfRange {
        value: f64,
        min: Option<f64>,
        max: Option<f64>,
    },
    #[error("the device refused it: {0}")]
    Exception(String),
    #[error("no answer: {0}")]
    Transport(BusError),
    #[error("shutting down")]
    Cancelled,
}

fn fmt_bound(b: Option<f64>) -> String {
    b.map(|x| x.to_string()).unwrap_or_default()
}

impl ModbusAdapter {
    pub fn new(spec: &DeviceSpec, config: ModbusConfig) -> ModbusAdapter {
        let n = config.points.len();
        ModbusAdapter {
            config,
            poll_interval: spec.poll_interval,
            bus: None,
            solo: vec![false; n],
            problem: vec![None; n],
            failures: vec![0; n],
        }
    }

    /// The checked configuration.
    pub fn config(&self) -> &ModbusConfig {
        &self.config
    }

    fn limits(&self) -> Limits {
        Limits {
            max_gap: self.config.max_gap,
            max_registers: self.config.max_registers_per_read,
            max_bits: self.config.max_bits_per_read,
        }
    }

    fn timing(&self) -> Timing {
        Timing {
            timeout: self.config.timeout,
            delay_between_requests: self.config.delay_between_requests,
            delay_on_unit_switch: self.config.delay_on_unit_switch,
        }
    }

    fn interval(&self, i: usize) -> Duration {
        self.config.points[i]
            .poll_interval
            .unwrap_or(self.poll_interval)
    }

    /// The read requests for the points `due`.
    pub fn plan(&self, due: &[usize]) -> Vec<ReadRequest> {
        let items: Vec<Item> = due
            .iter()
            .map(|&i| {
                let p = &self.config.points[i];
                Item {
                    point: i,
                    table: p.table,
                    address: p.address,
                    count: p.count(),
                    solo: self.solo[i],
                }
            })
            .collect();
        plan::plan(&items, &self.limits())
    }

    fn plan_lines(&self, due: &[usize], indent: &str) -> Vec<String> {
        self.plan(due)
            .iter()
            .map(|r| {
                let names: Vec<&str> = r
                    .points
                    .iter()
                    .map(|&i| &*self.config.points[i].name)
                    .collect();
                format!("{indent}{r}: {}", names.join(", "))
            })
            .collect()
    }

    /// Read the points `due` once. Exceptions and bad values are the points' problem
    /// (logged, counted, not published); a transport failure ends the cycle.
    async fn read(
        &mut self,
        ctx: &AdapterContext,
        due: &[usize],
    ) -> Result<Vec<Reading>, CycleError> {
        let mut readings = Vec::with_capacity(due.len());
        for req in self.plan(due) {
            let answer = self.call(ctx, read_request(&req)).await?;
            match answer {
                Ok(response) => self.take(ctx, &req, response, &mut readings),
                Err(exc) if req.points.len() > 1 && splits(exc) => {
                    log::info!(
                        "device {}: {req} answered \"{exc}\"; its points are read one by one \
                         from now on",
                        ctx.device
                    );
                    for &i in &req.points {
                        self.solo[i] = true;
                    }
                    for &i in &req.points {
                        let p = &self.config.points[i];
                        let one = ReadRequest {
                            table: p.table,
                            address: p.address,
                            count: p.count(),
                            points: vec![i],
                        };
                        match self.call(ctx, read_request(&one)).await? {
                            Ok(response) => self.take(ctx, &one, response, &mut readings),
                            Err(exc) => self.point_problem(ctx, i, exception_text(exc)),
                        }
                    }
                }
                Err(exc) => {
                    for &i in &req.points {
                        self.point_problem(ctx, i, exception_text(exc));
                    }
                }
            }
        }
        Ok(readings)
    }

    /// Decode the points of `req` from its response.
    fn take(
        &mut self,
        ctx: &AdapterContext,
        req: &ReadRequest,
        response: Response,
        out: &mut Vec<Reading>,
    ) {
        let ts = SystemTime::now();
        let (words, bits) = match response {
            Response::ReadHoldingRegisters(w) | Response::ReadInputRegisters(w) => (w, Vec::new()),
            Response::ReadCoils(b) | Response::ReadDiscreteInputs(b) => (Vec::new(), b),
            other => {
                for &i in &req.points {
                    self.point_problem(ctx, i, format!("unexpected answer {other:?}"));
                }
                return;
            }
        };
        for &i in &req.points {
            let p = &self.config.points[i];
            match decode_point(p, req.address, &words, &bits) {
                Ok(v) if v.is_publishable() => {
                    // Built whole: `Reading::new` would read the clock for each point
                    // (benches/modbus.rs, `publish_1000_registers`).
                    let reading = Reading {
                        device: ctx.device.clone(),
                        point: p.name.clone(),
                        value: v,
                        unit: p.unit.clone(),
                        ts,
                        quality: Quality::Good,
                    };
                    self.point_ok(ctx, i);
                    out.push(reading);
                }
                Ok(v) => self.point_problem(ctx, i, format!("{v} is not a number JSON can carry")),
                Err(e) => self.point_problem(ctx, i, e),
            }
        }
    }

    fn point_problem(&mut self, ctx: &AdapterContext, i: usize, problem: String) {
        self.failures[i] += 1;
        if self.problem[i].as_deref() != Some(problem.as_str()) {
            log::warn!(
                "device {}: point {}: {problem} (not published; {} failed read(s) so far)",
                ctx.device,
                self.config.points[i].name,
                self.failures[i]
            );
            self.problem[i] = Some(problem);
        }
    }

    fn point_ok(&mut self, ctx: &AdapterContext, i: usize) {
        if let Some(was) = self.problem[i].take() {
            log::info!(
                "device {}: point {} reads again (was: {was})",
                ctx.device,
                self.config.points[i].name
            );
        }
    }

    /// One request on the bus, retried on transport errors, given up when the daemon
    /// stops.
    async fn call(
        &self,
        ctx: &AdapterContext,
        request: Request<'static>,
    ) -> Result<Result<Response, ExceptionCode>, CycleError> {
        let Some(bus) = &self.bus else {
            return Err(CycleError::Transport(BusError::Stopped));
        };
        let timing = self.timing();
        let mut last = BusError::Stopped;
        for attempt in 0..=self.config.retries {
            let answer = tokio::select! {
                _ = ctx.cancel.cancelled() => return Err(CycleError::Cancelled),
                a = bus.call(self.config.unit, request.clone(), timing) => a,
            };
            match answer {
                Ok(a) => return Ok(a),
                Err(e) => {
                    log::debug!(
                        "device {}: {request:?} try {} of {}: {e}",
                        ctx.device,
                        attempt + 1,
                        self.config.retries + 1
                    );
                    last = e;
                }
            }
        }
        Err(CycleError::Transport(last))
    }

    /// Write a `/set` to the device, then read the point back.
    async fn write(
        &mut self,
        ctx: &AdapterContext,
        cmd: &Command,
    ) -> Result<Vec<Reading>, WriteError> {
        let Some(i) = self
            .config
            .points
            .iter()
            .position(|p| *p.name == *cmd.point)
        else {
            return Err(WriteError::NoSuchPoint(cmd.point.clone()));
        };
        let p = self.config.points[i].clone();
        if !p.writable || !p.table.is_writable() {
            return Err(WriteError::ReadOnly(cmd.point.clone()));
        }
        let request = match (p.table, p.format.bit) {
            (Table::Coil, _) => Request::WriteSingleCoil(p.address, value::json_bool(&cmd.value)?),
            (_, Some(bit)) => {
                // One bit of a register: read it, change the bit, write it back.
                let on = value::json_bool(&cmd.value)?;
                let word = match self
                    .call_write(ctx, Request::ReadHoldingRegisters(p.address, 1))
                    .await?
                {
                    Response::ReadHoldingRegisters(w) if !w.is_empty() => w[0],
                    other => {
                        return Err(WriteError::Exception(format!(
                            "unexpected answer {other:?} to reading the register"
                        )))
                    }
                };
                let bytes = to_bytes(&[word], p.format.order);
                let mut v = u16::from_be_bytes([bytes[0], bytes[1]]);
                if on {
                    v |= 1 << bit;
                } else {
                    v &= !(1 << bit);
                }
                let w = from_bytes(&v.to_be_bytes(), p.format.order);
                Request::WriteSingleRegister(p.address, w.first().copied().unwrap_or(v))
            }
            _ => {
                check_range(&p, &cmd.value)?;
                let words = value::encode(&p.format, &cmd.value)?;
                if words.len() == 1 {
                    Request::WriteSingleRegister(p.address, words[0])
                } else {
                    Request::WriteMultipleRegisters(p.address, Cow::Owned(words))
                }
            }
        };
        log::debug!(
            "device {}: point {} /set {}: {request:?}",
            ctx.device,
            p.name,
            cmd.value
        );
        self.call_write(ctx, request).await?;
        log::info!(
            "device {}: point {} set to {}",
            ctx.device,
            p.name,
            cmd.value
        );
        // Read back what the device holds now, and publish that.
        match self.read(ctx, &[i]).await {
            Ok(r) => Ok(r),
            Err(CycleError::Cancelled) => Err(WriteError::Cancelled),
            Err(CycleError::Transport(e)) => Err(WriteError::Transport(e)),
        }
    }

    async fn call_write(
        &self,
        ctx: &AdapterContext,
        request: Request<'static>,
    ) -> Result<Response, WriteError> {
        match self.call(ctx, request).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(exc)) => Err(WriteError::Exception(exception_text(exc))),
            Err(CycleError::Cancelled) => Err(WriteError::Cancelled),
            Err(CycleError::Transport(e)) => Err(WriteError::Transport(e)),
        }
    }
}

/// The value of point `p` in the answer to a read that started at register (or bit)
/// `start`: its registers sliced out of `words` and decoded, or its bit of `bits`. The
/// pure part of taking an answer (benchmarked in `benches/modbus.rs`).
pub fn decode_point(
    p: &Point,
    start: u16,
    words: &[u16],
    bits: &[bool],
) -> Result<sensorgate_api::Value, String> {
    let off = usize::from(p.address.saturating_sub(start));
    if p.table.is_bits() {
        return bits
            .get(off)
            .map(|b| sensorgate_api::Value::Bool(*b))
            .ok_or_else(|| format!("the answer has {} bits, too few", bits.len()));
    }
    match words.get(off..off + usize::from(p.count())) {
        Some(w) => value::decode(&p.format, w).map_err(|e| e.to_string()),
        None => Err(format!("the answer has {} registers, too few", words.len())),
    }
}

/// `min`/`max` of a point against the value asked for (before scale and offset).
fn check_range(p: &Point, value: &serde_json::Value) -> Result<(), WriteError> {
    if p.min.is_none() && p.max.is_none() {
        return Ok(());
    }
    let v = value::json_number(value)?;
    if p.min.is_some_and(|m| v < m) || p.max.is_some_and(|m| v > m) {
        return Err(WriteError::OutOfRange {
            value: v,
            min: p.min,
            max: p.max,
        });
    }
    Ok(())
}

/// Exceptions that a read of fewer registers may not get: a register in a filled gap
/// that does not exist, a quantity the device does not take.
fn splits(exc: ExceptionCode) -> bool {
    matches!(
        exc,
        ExceptionCode::IllegalDataAddress | ExceptionCode::IllegalDataValue
    )
}

/// `exception 0x02 (Illegal data address)`.
pub fn exception_text(exc: ExceptionCode) -> String {
    format!("exception 0x{:02X} ({exc})", u8::from(exc))
}

fn read_request(r: &ReadRequest) -> Request<'static> {
    match r.table {
        Table::Coil => Request::ReadCoils(r.address, r.count),
        Table::Discrete => Request::ReadDiscreteInputs(r.address, r.count),
        Table::Holding => Request::ReadHoldingRegisters(r.address, r.count),
        Table::Input => Request::ReadInputRegisters(r.address, r.count),
    }
}

#[sensorgate_api::async_trait]
impl Adapter for ModbusAdapter {
    fn points(&self) -> Vec<PointInfo> {
        self.config
            .points
            .iter()
            .map(|p| PointInfo {
                name: p.name.to_string(),
                unit: p.unit.as_deref().map(str::to_string),
                writable: p.writable,
                device_class: p.device_class.clone(),
                state_class: p.state_class.clone(),
                source: p.source(),
            })
            .collect()
    }

    fn describe(&self) -> Vec<String> {
        let c = &self.config;
        let mut lines = vec![format!(
            "modbus {}, unit {}, timeout {}, {} retr{}",
            c.transport,
            c.unit,
            humantime::format_duration(c.timeout),
            c.retries,
            if c.retries == 1 { "y" } else { "ies" }
        )];
        let all: Vec<usize> = (0..c.points.len()).collect();
        let full = self.plan(&all);
        lines.push(format!(
            "read plan: {} request(s) per cycle for {} point(s) (max_gap {}, at most {} \
             registers / {} bits per read)",
            full.len(),
            c.points.len(),
            c.max_gap,
            c.max_registers_per_read,
            c.max_bits_per_read
        ));
        lines.extend(self.plan_lines(&all, "  "));
        let mut intervals: Vec<Duration> = all.iter().map(|&i| self.interval(i)).collect();
        intervals.sort();
        intervals.dedup();
        if intervals.len() > 1 {
            for d in intervals {
                let due: Vec<usize> = all
                    .iter()
                    .copied()
                    .filter(|&i| self.interval(i) == d)
                    .collect();
                lines.push(format!(
                    "points every {}: {} request(s) when due alone",
                    humantime::format_duration(d),
                    self.plan(&due).len()
                ));
                lines.extend(self.plan_lines(&due, "  "));
            }
        }
        lines
    }

    async fn run(&mut self, ctx: &mut AdapterContext) -> Result<(), AdapterError> {
        self.bus = Some(Bus::get(&self.config.transport).map_err(AdapterError::fatal)?);
        let n = self.config.points.len();
        let intervals: Vec<Duration> = (0..n).map(|i| self.interval(i)).collect();
        let shortest = intervals
            .iter()
            .min()
            .copied()
            .unwrap_or(self.poll_interval);
        let mut backoff = Backoff::new(
            (shortest / 10).max(Duration::from_millis(100)),
            Duration::from_secs(60).max(shortest),
        );
        let start = Instant::now();
        let mut due = vec![start; n];
        let mut retry_at: Option<Instant> = None;
        let mut commands_open = true;
        loop {
            let next = due
                .iter()
                .min()
                .copied()
                .unwrap_or(start + self.poll_interval);
            let wake = retry_at.map_or(next, |r| r.max(next));
            tokio::select! {
                _ = ctx.cancel.cancelled() => return Ok(()),
                cmd = ctx.commands.recv(), if commands_open => {
                    let Some(cmd) = cmd else {
                        commands_open = false;
                        continue;
                    };
                    match self.write(ctx, &cmd).await {
                        Ok(readings) => {
                            if ctx.publish(readings).await.is_err() {
                                return Ok(()); // The daemon stopped taking readings.
                            }
                        }
                        Err(WriteError::Cancelled) => return Ok(()),
                        Err(e) => log::warn!(
                            "device {}: write to point {:?} refused: {e}", ctx.device, cmd.point
                        ),
                    }
                    continue;
                }
                _ = tokio::time::sleep_until(wake) => {}
            }
            let now = Instant::now();
            let points: Vec<usize> = (0..n).filter(|&i| due[i] <= now + SLACK).collect();
            match self.read(ctx, &points).await {
                Ok(readings) => {
                    backoff.reset();
                    retry_at = None;
                    for &i in &points {
                        let mut d = due[i] + intervals[i];
                        if d <= now {
                            d = now + intervals[i]; // Fell behind: skip, don't burst.
                        }
                        due[i] = d;
                    }
                    if ctx.is_online() == Some(false) {
                        log::info!("device {} is back online", ctx.device);
                    }
                    if ctx.publish(readings).await.is_err() {
                        return Ok(()); // The daemon stopped taking readings.
                    }
                }
                Err(CycleError::Cancelled) => return Ok(()),
                Err(CycleError::Transport(e)) => {
                    if ctx.is_online() != Some(false) {
                        log::warn!("device {} offline: {e}", ctx.device);
                    } else {
                        log::debug!("device {} still offline: {e}", ctx.device);
                    }
                    if ctx.set_online(false).await.is_err() {
                        return Ok(());
                    }
                    retry_at = Some(Instant::now() + backoff.next_delay());
                }
            }
        }
    }
}
