//! The running onewire device: each poll reads every sensor at once, publishes the good
//! values, and keeps the bad readings out.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, SystemTime};

use sensorgate_api::{
    run_poller, Adapter, AdapterContext, AdapterError, PointInfo, Poller, Quality, Reading, Value,
};
use tokio::sync::oneshot::{self, error::TryRecvError};
use tokio::time::{timeout_at, Instant};

use crate::config::{OnewireConfig, Point};
use crate::sensor::{self, Bad, BadKind, POWER_ON_MILLIS};

/// A sensor warns about bad readings at most this often (the first one at once).
pub const WARN_EVERY: Duration = Duration::from_secs(600);

/// An 85 °C reading is taken as real when the sensor's last good value was this close to
/// 85 °C (a boiler can be that hot); after any other value it is the power-on value.
pub const POWER_ON_NEAR_C: f64 = 2.0;

/// What one blocking read hands back: the value or why not, and when it was taken.
type ReadResult = (Result<i64, Bad>, SystemTime);

/// A onewire device, built from a checked [`OnewireConfig`].
#[derive(Debug)]
pub struct OnewireAdapter {
    config: OnewireConfig,
    /// What is known of each sensor read so far, by id. With listed points every listed
    /// sensor has an entry; with auto-discovery, every sensor found and not yet given up.
    sensors: BTreeMap<String, SensorState>,
}

/// One sensor's history: what it read last, how often it failed, and a read that may
/// still be running.
#[derive(Debug, Default)]
pub struct SensorState {
    /// A read that outlived `timeout`: no new read starts while it runs, so a hung bus
    /// does not pile up threads.
    pending: Option<oneshot::Receiver<ReadResult>>,
    /// The last good value, in °C (for the power-on check).
    last_good_c: Option<f64>,
    /// Bad reads since the last good one.
    bad_in_a_row: u32,
    /// Whether it has read well and not failed `offline_after` times in a row since.
    healthy: bool,
    /// Counts since start: good reads, and bad reads by [`BadKind::index`].
    pub good: u64,
    pub bad: [u64; 5],
    /// Bad reads since the last warning, by kind.
    unwarned: [u64; 5],
    last_warning: Option<Instant>,
}

impl SensorState {
    /// The bad reads since start, all kinds.
    pub fn bad_total(&self) -> u64 {
        self.bad.iter().sum()
    }
}

/// What one poll got from one sensor.
enum Outcome {
    Good(i64, SystemTime),
    Bad(Bad, SystemTime),
}

impl OnewireAdapter {
    pub fn new(config: OnewireConfig) -> OnewireAdapter {
        let sensors = config
            .points
            .iter()
            .map(|p| (p.sensor.clone(), SensorState::default()))
            .collect();
        OnewireAdapter { config, sensors }
    }

    /// What is known of sensor `id` (counts of good and bad reads), if it is read.
    pub fn sensor(&self, id: &str) -> Option<&SensorState> {
        self.sensors.get(id)
    }

    /// The points of this poll: the listed ones, or one per sensor found under the root
    /// and per sensor found before and not yet given up.
    async fn targets(&self) -> Vec<Point> {
        if !self.config.discovers() {
            return self.config.points.clone();
        }
        let root = self.config.root.clone();
        let found = tokio::task::spawn_blocking(move || sensor::scan(&root))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        let mut ids: Vec<String> = match found {
            Ok(ids) => ids,
            Err(e) => {
                log::debug!("cannot list {}: {e}", self.config.root.display());
                Vec::new()
            }
        };
        ids.extend(self.sensors.keys().cloned());
        ids.sort();
        ids.dedup();
        ids.iter().map(|id| Point::auto(id)).collect()
    }

    /// Read every target at once; each read is bounded by `timeout` from the start.
    async fn read_all(
        &mut self,
        ctx: &AdapterContext,
        targets: &[Point],
    ) -> Result<Vec<Outcome>, AdapterError> {
        let deadline = Instant::now() + self.config.timeout;
        let mut reads = Vec::with_capacity(targets.len());
        for p in targets {
            let state = self.sensors.entry(p.sensor.clone()).or_default();
            let busy = state
                .pending
                .as_mut()
                .is_some_and(|rx| matches!(rx.try_recv(), Err(TryRecvError::Empty)));
            if busy {
                reads.push(Read::Busy);
                continue;
            }
            // A read that finished after its poll gave up on it is stale: dropped.
            state.pending = None;
            reads.push(start_read(&self.config.root, &p.sensor));
        }
        let mut out = Vec::with_capacity(targets.len());
        for (p, read) in targets.iter().zip(reads) {
            let mut rx = match read {
                Read::Started(rx) => rx,
                Read::Busy => {
                    out.push(Outcome::Bad(
                        Bad::new(
                            BadKind::Timeout,
                            "the read of an earlier poll has not returned yet",
                        ),
                        SystemTime::now(),
                    ));
                    continue;
                }
                Read::NotStarted(e) => {
                    out.push(Outcome::Bad(
                        Bad::new(BadKind::Missing, format!("cannot start a read: {e}")),
                        SystemTime::now(),
                    ));
                    continue;
                }
            };
            let got = tokio::select! {
                _ = ctx.cancel.cancelled() => return Err(AdapterError::Cancelled),
                got = timeout_at(deadline, &mut rx) => got,
            };
            out.push(match got {
                Ok(Ok((Ok(millis), ts))) => Outcome::Good(millis, ts),
                Ok(Ok((Err(bad), ts))) => Outcome::Bad(bad, ts),
                Ok(Err(_)) => Outcome::Bad(
                    Bad::new(BadKind::Missing, "the read ended without an answer"),
                    SystemTime::now(),
                ),
                Err(_) => {
                    let timeout = self.config.timeout;
                    if let Some(state) = self.sensors.get_mut(&p.sensor) {
                        state.pending = Some(rx);
                    }
                    Outcome::Bad(
                        Bad::new(
                            BadKind::Timeout,
                            format!("no answer within {}", humantime_ms(timeout)),
                        ),
                        SystemTime::now(),
                    )
                }
            });
        }
        Ok(out)
    }
}

/// A sensor's read of one poll.
enum Read {
    Started(oneshot::Receiver<ReadResult>),
    /// The read of an earlier poll still runs.
    Busy,
    NotStarted(std::io::Error),
}

/// Read sensor `id` on a thread of its own. Not tokio's blocking pool: a sysfs read that
/// hangs would keep the runtime, and so the daemon, from ending at shutdown; a plain
/// thread ends with the process. The caller starts no second read of a sensor while
/// one runs, so a hung bus holds at most one thread per sensor.
fn start_read(root: &Path, id: &str) -> Read {
    let (tx, rx) = oneshot::channel();
    let root = root.to_path_buf();
    let id = id.to_string();
    let spawned = std::thread::Builder::new()
        .name("onewire-read".into())
        .spawn(move || {
            let r = sensor::read_blocking(&root, &id);
            // The poll may have stopped waiting: then nobody wants the answer.
            let _ = tx.send((r, SystemTime::now()));
        });
    match spawned {
        Ok(_) => Read::Started(rx),
        Err(e) => Read::NotStarted(e),
    }
}

/// A duration for people: `3s`, `750ms`.
fn humantime_ms(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// `point 28-… ` or `point boiler_flow (sensor 28-…)`, for log lines.
fn who(p: &Point) -> String {
    if *p.name == p.sensor {
        format!("sensor {}", p.sensor)
    } else {
        format!("point {} (sensor {})", p.name, p.sensor)
    }
}

/// `3 CRC, 1 timeout`: the non-zero counts.
fn counts(c: &[u64; 5]) -> String {
    let mut s = String::new();
    for k in BadKind::ALL {
        let n = c[k.index()];
        if n > 0 {
            if !s.is_empty() {
                s.push_str(", ");
            }
            let _ = write!(s, "{n} {}", k.name());
        }
    }
    s
}

#[sensorgate_api::async_trait]
impl Adapter for OnewireAdapter {
    fn points(&self) -> Vec<PointInfo> {
        let info = |p: &Point, source: String| PointInfo {
            name: p.name.to_string(),
            unit: Some(p.unit.to_string()),
            writable: false,
            device_class: p.device_class.clone(),
            state_class: p.state_class.clone(),
            source,
        };
        if self.config.discovers() {
            // What is there now; the running device looks again at every poll.
            return sensor::scan(&self.config.root)
                .unwrap_or_default()
                .iter()
                .map(|id| {
                    info(
                        &Point::auto(id),
                        format!("found under {}", self.config.root.display()),
                    )
                })
                .collect();
        }
        self.config
            .points
            .iter()
            .map(|p| {
                let mut source = format!("sensor {}", p.sensor);
                if p.offset != 0.0 {
                    let _ = write!(source, ", offset {:+}", p.offset);
                }
                info(p, source)
            })
            .collect()
    }

    fn describe(&self) -> Vec<String> {
        let root = &self.config.root;
        let mut lines = Vec::new();
        if self.config.discovers() {
            lines.push(format!(
                "every temperature sensor under {}, looked for at every poll",
                root.display()
            ));
        } else {
            lines.push(format!(
                "the {} listed sensor(s) under {}; others are not read",
                self.config.points.len(),
                root.display()
            ));
        }
        if !root.is_dir() {
            lines.push(format!(
                "{} does not exist now: is 1-wire enabled (dtoverlay=w1-gpio)?",
                root.display()
            ));
        }
        lines.push(format!(
            "a sensor fails after {} bad read(s) in a row; each read waits up to {}",
            self.config.offline_after,
            humantime_ms(self.config.timeout)
        ));
        lines
    }

    async fn run(&mut self, ctx: &mut AdapterContext) -> Result<(), AdapterError> {
        run_poller(self, ctx).await
    }
}

#[sensorgate_api::async_trait]
impl Poller for OnewireAdapter {
    async fn poll(&mut self, ctx: &AdapterContext) -> Result<Vec<Reading>, AdapterError> {
        let targets = self.targets().await;
        let outcomes = self.read_all(ctx, &targets).await?;
        let now = Instant::now();
        let offline_after = self.config.offline_after;
        let discovers = self.config.discovers();
        let mut readings = Vec::with_capacity(targets.len());
        let mut last_errors = Vec::new();
        for (p, outcome) in targets.iter().zip(outcomes) {
            let Some(state) = self.sensors.get_mut(&p.sensor) else {
                continue;
            };
            // The power-on value is bad unless the sensor was near 85 °C already.
            let outcome = match outcome {
                Outcome::Good(POWER_ON_MILLIS, ts)
                    if !state
                        .last_good_c
                        .is_some_and(|c| (c - 85.0).abs() <= POWER_ON_NEAR_C) =>
                {
                    Outcome::Bad(
                        Bad {
                            kind: BadKind::PowerOn,
                            message: "85 °C, the power-on value: the sensor lost power or \
                                      did not convert"
                                .into(),
                            millis: Some(POWER_ON_MILLIS),
                        },
                        ts,
                    )
                }
                o => o,
            };
            let name = who(p);
            match outcome {
                Outcome::Good(millis, ts) => {
                    if state.bad_in_a_row >= offline_after {
                        log::info!(
                            "device {}: {name} reads again after {} bad read(s)",
                            ctx.device,
                            state.bad_in_a_row
                        );
                    }
                    state.good += 1;
                    state.bad_in_a_row = 0;
                    state.healthy = true;
                    state.last_good_c = Some(millis as f64 / 1000.0);
                    readings.push(
                        ctx.reading(p.name.clone(), Value::Float(p.value(millis)))
                            .with_unit(Some(p.unit.clone()))
                            .with_ts(ts),
                    );
                }
                Outcome::Bad(bad, ts) => {
                    let k = bad.kind.index();
                    state.bad[k] += 1;
                    state.unwarned[k] += 1;
                    state.bad_in_a_row = state.bad_in_a_row.saturating_add(1);
                    let due = state
                        .last_warning
                        .is_none_or(|t| now.duration_since(t) >= WARN_EVERY);
                    if due {
                        let held_back: u64 = state.unwarned.iter().sum::<u64>() - 1;
                        if held_back == 0 {
                            log::warn!(
                                "device {}: {name}: bad reading, not published: {bad} (more \
                                 are warned about at most every {} min)",
                                ctx.device,
                                WARN_EVERY.as_secs() / 60
                            );
                        } else {
                            log::warn!(
                                "device {}: {name}: bad reading, not published: {bad} ({} \
                                 since the last warning)",
                                ctx.device,
                                counts(&state.unwarned)
                            );
                        }
                        state.unwarned = [0; 5];
                        state.last_warning = Some(now);
                    } else {
                        log::debug!("device {}: {name}: bad reading: {bad}", ctx.device);
                    }
                    if state.bad_in_a_row == offline_after {
                        state.healthy = false;
                        log::warn!(
                            "device {}: {name} failing: {offline_after} bad read(s) in a row, \
                             the last: {bad}",
                            ctx.device
                        );
                    }
                    last_errors.push(format!("{}: {bad}", p.sensor));
                    let value = bad
                        .millis
                        .map_or(Value::Float(f64::NAN), |m| Value::Float(p.value(m)));
                    readings.push(
                        ctx.reading(p.name.clone(), value)
                            .with_unit(Some(p.unit.clone()))
                            .with_ts(ts)
                            .with_quality(Quality::Bad(format!("{}: {bad}", bad.kind.name()))),
                    );
                }
            }
        }
        // Auto-discovery gives up on a sensor that is gone and has failed: unplugged for
        // good, it is not read (nor counted) again until its folder comes back.
        if discovers {
            let root = &self.config.root;
            self.sensors.retain(|id, s| {
                let keep = s.bad_in_a_row < offline_after || root.join(id).is_dir();
                if !keep {
                    log::warn!(
                        "device {}: sensor {id} is gone from {}; it is read again when it \
                         comes back",
                        ctx.device,
                        root.display()
                    );
                }
                keep
            });
        }
        if self.sensors.values().any(|s| s.healthy) {
            return Ok(readings);
        }
        Err(AdapterError::Transport(offline_reason(
            &self.config.root,
            discovers,
            targets.is_empty(),
            &last_errors,
        )))
    }

    // `write`: the default refusal; a thermometer takes no writes.
}

/// Why no sensor of the device can be read, for the "offline" line.
fn offline_reason(root: &Path, discovers: bool, none_found: bool, errors: &[String]) -> String {
    if !root.is_dir() {
        return format!(
            "{} does not exist: is 1-wire enabled (dtoverlay=w1-gpio) and the w1-therm \
             module loaded?",
            root.display()
        );
    }
    if discovers && none_found {
        return format!("no temperature sensor under {}", root.display());
    }
    let mut s = String::from("no sensor gives good readings");
    if !errors.is_empty() {
        let shown: Vec<&str> = errors.iter().take(3).map(String::as_str).collect();
        let _ = write!(s, ": {}", shown.join("; "));
        if errors.len() > shown.len() {
            let _ = write!(s, "; and {} more", errors.len() - shown.len());
        }
    }
    s
}

impl OnewireAdapter {
    /// The folder the sensors are read from.
    pub fn root(&self) -> &Path {
        &self.config.root
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{DEFAULT_OFFLINE_AFTER, DEFAULT_TIMEOUT};
    use sensorgate_api::CancellationToken;
    use tokio::sync::mpsc;

    #[tokio::test]
    async fn warnings_are_rate_limited_and_count_what_they_held_back() {
        let tmp = tempfile::TempDir::new().unwrap();
        let dir = tmp.path().to_path_buf();
        let id = "28-0316a2794bff";
        std::fs::create_dir_all(dir.join(id)).unwrap();
        std::fs::write(
            dir.join(id).join("w1_slave"),
            "72 01 4b 46 7f ff 0e 10 57 : crc=57 NO\n72 01 4b 46 7f ff 0e 10 57 t=23125\n",
        )
        .unwrap();
        let mut adapter = OnewireAdapter::new(OnewireConfig {
            root: dir.clone(),
            timeout: DEFAULT_TIMEOUT,
            offline_after: DEFAULT_OFFLINE_AFTER,
            points: Vec::new(),
        });
        let (events, _events_rx) = mpsc::channel(4);
        let (_commands_tx, commands) = mpsc::channel(4);
        let ctx = AdapterContext::new(
            "temps".into(),
            Duration::from_secs(1),
            dir.clone(),
            CancellationToken::new(),
            events,
            commands,
        );

        // Never a good read: offline from the first poll on.
        let e = adapter.poll(&ctx).await.unwrap_err();
        assert!(
            matches!(&e, AdapterError::Transport(m) if m.contains("CRC")),
            "{e}"
        );
        let s = adapter.sensor(id).unwrap();
        let first = s.last_warning.expect("the first bad reading warns");
        assert_eq!(s.unwarned, [0; 5]);

        for _ in 0..4 {
            let _ = adapter.poll(&ctx).await;
        }
        let s = adapter.sensor(id).unwrap();
        assert_eq!(
            s.last_warning,
            Some(first),
            "no second warning within WARN_EVERY"
        );
        assert_eq!(s.unwarned, [4, 0, 0, 0, 0]);
        assert_eq!(counts(&s.unwarned), "4 CRC");
        assert_eq!(s.bad, [5, 0, 0, 0, 0]);

        // Once WARN_EVERY has gone by, the next bad reading warns with the count.
        adapter.sensors.get_mut(id).unwrap().last_warning = first.checked_sub(WARN_EVERY);
        let _ = adapter.poll(&ctx).await;
        let s = adapter.sensor(id).unwrap();
        assert!(s.last_warning > Some(first));
        assert_eq!(s.unwarned, [0; 5]);
    }
}
