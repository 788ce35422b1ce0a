//! The running sim device: each poll computes one reading per point.

use std::f64::consts::TAU;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sensorgate_api::{
    run_poller, Adapter, AdapterContext, AdapterError, DeviceSpec, PointInfo, Poller, Reading,
    Value,
};

use crate::config::{Point, Range, Signal, SimConfig};
use crate::counters::{self, Counters};

/// A simulated device, built from a checked [`SimConfig`].
#[derive(Debug)]
pub struct SimAdapter {
    points: Vec<Point>,
    /// The random points' generator; seeded from the clock and the device name.
    rng: XorShift,
    /// The counter points' progress; only touched when there are counter points.
    counters: Counters,
    has_counters: bool,
    /// The state folder the daemon named at build time, for `sensorgate check`; running
    /// uses the context's.
    state_dir: PathBuf,
}

impl SimAdapter {
    pub fn new(spec: &DeviceSpec, config: SimConfig) -> SimAdapter {
        let has_counters = config
            .points
            .iter()
            .any(|p| matches!(p.signal, Signal::Counter));
        SimAdapter {
            points: config.points,
            rng: XorShift::seeded(&spec.name),
            counters: Counters::default(),
            has_counters,
            state_dir: spec.state_dir.clone(),
        }
    }
}

#[sensorgate_api::async_trait]
impl Adapter for SimAdapter {
    fn points(&self) -> Vec<PointInfo> {
        self.points
            .iter()
            .map(|p| PointInfo {
                name: p.name.to_string(),
                unit: p.unit.as_deref().map(str::to_string),
                writable: false,
                device_class: p.device_class.clone(),
                state_class: p.state_class.clone(),
                source: source(&p.signal),
            })
            .collect()
    }

    fn describe(&self) -> Vec<String> {
        if self.has_counters {
            vec![format!(
                "counter state: {}",
                self.state_dir.join(counters::FILE_NAME).display()
            )]
        } else {
            Vec::new()
        }
    }

    async fn run(&mut self, ctx: &mut AdapterContext) -> Result<(), AdapterError> {
        run_poller(self, ctx).await
    }
}

#[sensorgate_api::async_trait]
impl Poller for SimAdapter {
    async fn poll(&mut self, ctx: &AdapterContext) -> Result<Vec<Reading>, AdapterError> {
        if self.has_counters {
            self.counters.load(&ctx.device, &ctx.state_dir).await;
        }
        let ts = SystemTime::now();
        let t = ts
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let mut readings = Vec::with_capacity(self.points.len());
        for p in &self.points {
            let value = match &p.signal {
                Signal::Sine { period, range } => Value::Float(sine(t, *period, range)),
                Signal::Random { range } => {
                    let u = self.rng.next_f64();
                    Value::Float(range.fit(range.min + (range.max - range.min) * u))
                }
                Signal::Counter => Value::Int(self.counters.next(&p.name)),
                Signal::Constant(v) => v.clone(),
            };
            readings.push(
                ctx.reading(p.name.clone(), value)
                    .with_unit(p.unit.clone())
                    .with_ts(ts),
            );
        }
        Ok(readings)
    }

    async fn committed(&mut self, ctx: &AdapterContext) -> Result<(), AdapterError> {
        if self.has_counters {
            self.counters.commit(&ctx.device, &ctx.state_dir).await;
        }
        Ok(())
    }

    // `write`: the default refusal; no sim point is writable.
}

/// The sine at `t` seconds since the epoch: continuous across restarts, since it depends
/// on the clock only.
fn sine(t: f64, period: Duration, range: &Range) -> f64 {
    let p = period.as_secs_f64();
    // Reduce first: t is about 1.8e9, and the phase keeps its precision this way.
    let phase = (t % p) / p;
    let x = range.min + (range.max - range.min) * (0.5 + 0.5 * (TAU * phase).sin());
    range.fit(x)
}

/// One line for `sensorgate check`: where the point's values come from.
fn source(signal: &Signal) -> String {
    match signal {
        Signal::Sine { period, range } => format!(
            "sine {}..{} over {}",
            range.min,
            range.max,
            humantime::format_duration(*period)
        ),
        Signal::Random { range } => format!("random {}..{}", range.min, range.max),
        Signal::Counter => "counter (resumes after restarts)".to_string(),
        Signal::Constant(Value::Text(s)) => format!("constant {s:?}"),
        Signal::Constant(v) => format!("constant {v}"),
    }
}

/// xorshift64: plenty for a simulated sensor, and no RNG crate.
#[derive(Debug, Clone)]
struct XorShift(u64);

impl XorShift {
    /// Seeded from the clock, mixed with the device name so that two devices started in
    /// the same instant still differ.
    fn seeded(device: &str) -> XorShift {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        // FNV-1a of the name.
        let name = device.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
        });
        // splitmix64 finalizer: spreads close seeds apart; `| 1` keeps it non-zero.
        let mut z = (nanos ^ name).wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        XorShift((z ^ (z >> 31)) | 1)
    }

    fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Uniform in `[0, 1)`: the top 53 bits as the mantissa.
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const R: Range = Range {
        min: 18.0,
        max: 24.0,
        decimals: 2,
    };

    #[test]
    fn sine_follows_the_clock() {
        let period = Duration::from_secs(60);
        // t = a whole number of periods: sin(0) = 0, the middle.
        assert_eq!(sine(1_800_000_000.0, period, &R), 21.0);
        // A quarter period later: the top; three quarters: the bottom.
        assert_eq!(sine(1_800_000_015.0, period, &R), 24.0);
        assert_eq!(sine(1_800_000_045.0, period, &R), 18.0);
        assert_eq!(sine(1_800_000_005.0, period, &R), 22.5);
    }

    #[test]
    fn xorshift_is_uniform_enough() {
        let mut r = XorShift::seeded("demo");
        let xs: Vec<f64> = (0..10_000).map(|_| r.next_f64()).collect();
        assert!(xs.iter().all(|x| (0.0..1.0).contains(x)));
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        assert!((mean - 0.5).abs() < 0.02, "mean {mean}");
        assert!(xs.iter().any(|x| *x < 0.1) && xs.iter().any(|x| *x > 0.9));
    }

    #[test]
    fn sources_read_well() {
        let s = source(&Signal::Sine {
            period: Duration::from_secs(60),
            range: R,
        });
        assert_eq!(s, "sine 18..24 over 1m");
        assert_eq!(
            source(&Signal::Random {
                range: Range {
                    min: 0.0,
                    max: 100.0,
                    decimals: 2
                }
            }),
            "random 0..100"
        );
        assert_eq!(source(&Signal::Counter), "counter (resumes after restarts)");
        assert_eq!(source(&Signal::Constant(Value::Int(42))), "constant 42");
        assert_eq!(
            source(&Signal::Constant(Value::Text("1.4.2".into()))),
            "constant \"1.4.2\""
        );
    }
}
