//! The keys of a sim device: read with unknown keys refused, then checked, and every
//! problem reported with its key path (`point[1].signal`), never a panic.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use sensorgate_api::config::{check_name, de_opt_duration, join_path};
use sensorgate_api::{ConfigError, DeviceSpec, Value};
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// `period` when a sine point leaves it out.
pub const DEFAULT_PERIOD: Duration = Duration::from_secs(60);
/// `min` when a sine or random point leaves it out.
pub const DEFAULT_MIN: f64 = 0.0;
/// `max` when a sine or random point leaves it out.
pub const DEFAULT_MAX: f64 = 100.0;
/// `decimals` when a sine or random point leaves it out.
pub const DEFAULT_DECIMALS: u32 = 2;
/// The most `decimals` that mean anything: an f64 holds about 15 significant digits.
pub const MAX_DECIMALS: u32 = 15;

/// The device table as first read. The points stay raw here so that each is parsed on its
/// own: a typo in `point[0]` does not hide the problems of `point[3]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeviceTable {
    /// Missing is the same as empty, so that both get the same, clearer error.
    #[serde(default)]
    point: Vec<toml::Value>,
}

/// What a point produces: `signal = "sine" | "counter" | "random" | "constant"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SignalKind {
    Sine,
    Counter,
    Random,
    Constant,
}

impl SignalKind {
    /// The name as written in the config.
    pub fn name(self) -> &'static str {
        match self {
            SignalKind::Sine => "sine",
            SignalKind::Counter => "counter",
            SignalKind::Random => "random",
            SignalKind::Constant => "constant",
        }
    }
}

impl fmt::Display for SignalKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One `[[device.point]]` table as written, before it is checked. Keys that only some
/// signals use are `Option`s so that a key set on the wrong signal can be named.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PointConfig {
    /// `[a-z0-9_-]+`, unique in the device: the last topic segment.
    pub name: String,
    pub signal: SignalKind,
    /// sine: the time of one full wave (default 60 s).
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub period: Option<Duration>,
    /// sine, random: the lowest value (default 0).
    pub min: Option<f64>,
    /// sine, random: the highest value (default 100).
    pub max: Option<f64>,
    /// constant: the value published every poll (an integer, float, bool or string).
    #[serde(default, deserialize_with = "de_opt_scalar")]
    pub value: Option<Value>,
    /// sine, random: digits after the decimal point (default 2).
    pub decimals: Option<u32>,
    /// Any signal: the unit put in the payload (`"°C"`).
    pub unit: Option<String>,
    /// Any signal: for Home Assistant discovery (`"temperature"`).
    pub device_class: Option<String>,
    /// Any signal: for Home Assistant discovery (`"measurement"`).
    pub state_class: Option<String>,
}

/// A checked point, ready to run.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub name: Arc<str>,
    pub unit: Option<Arc<str>>,
    pub device_class: Option<String>,
    pub state_class: Option<String>,
    pub signal: Signal,
}

/// A checked signal with its settings, defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub enum Signal {
    /// `min + (max-min) * (0.5 + 0.5*sin(2π t / period))`, t in seconds since the epoch.
    Sine { period: Duration, range: Range },
    /// Uniform in `min..=max`.
    Random { range: Range },
    /// 0, 1, 2, … one step per poll, resuming after restarts.
    Counter,
    /// The same value every poll.
    Constant(Value),
}

/// Where a sine or random value lies, and how it is rounded.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Range {
    pub min: f64,
    pub max: f64,
    pub decimals: u32,
}

impl Range {
    /// Round to `decimals` and keep within `min..=max` (rounding may step just outside).
    pub fn fit(&self, x: f64) -> f64 {
        let scale = 10f64.powi(self.decimals as i32);
        let rounded = (x * scale).round() / scale;
        let rounded = if rounded.is_finite() { rounded } else { x };
        // `+ 0.0` turns -0.0 into 0.0, which JSON shows as plain `0.0`.
        rounded.clamp(self.min, self.max) + 0.0
    }
}

/// All points of one sim device, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct SimConfig {
    pub points: Vec<Point>,
}

impl SimConfig {
    /// Parse and check a device's table; every problem found, each with its key path.
    pub fn from_spec(spec: &DeviceSpec) -> Result<SimConfig, Vec<ConfigError>> {
        let table: DeviceTable = spec.parse().map_err(|e| vec![e.first_line()])?;
        let mut errors = Vec::new();
        if table.point.is_empty() {
            errors.push(ConfigError::new(
                "point",
                "a sim device needs at least one point: add a [[device.point]] table \
                 with a name and a signal",
            ));
        }
        let mut seen: HashMap<String, usize> = HashMap::new();
        let mut points = Vec::with_capacity(table.point.len());
        for (i, raw) in table.point.into_iter().enumerate() {
            let at = format!("point[{i}]");
            // Duplicates are looked for in the raw table, so that a point with other
            // problems still counts.
            if let Some(name) = raw.get("name").and_then(toml::Value::as_str) {
                if let Some(first) = seen.get(name) {
                    errors.push(ConfigError::new(
                        join_path(&at, "name"),
                        format!("duplicate point name {name:?}: point[{first}] has it too"),
                    ));
                } else {
                    seen.insert(name.to_string(), i);
                }
            }
            match sensorgate_api::config::parse_table(raw) {
                Ok(p) => {
                    if let Some(point) = check_point(&at, p, &mut errors) {
                        points.push(point);
                    }
                }
                Err(e) => errors.push(e.under(&at)),
            }
        }
        if errors.is_empty() {
            Ok(SimConfig { points })
        } else {
            Err(errors)
        }
    }
}

/// Check one parsed point; push its problems and return it only if it has none.
fn check_point(at: &str, p: PointConfig, errors: &mut Vec<ConfigError>) -> Option<Point> {
    use SignalKind::*;
    let before = errors.len();
    let key = |k: &str| join_path(at, k);

    if let Err(e) = check_name(&p.name) {
        errors.push(ConfigError::new(key("name"), e));
    }

    // Keys set on a signal that does not use them.
    let only_for: [(&str, bool, &[SignalKind]); 5] = [
        ("period", p.period.is_some(), &[Sine]),
        ("min", p.min.is_some(), &[Sine, Random]),
        ("max", p.max.is_some(), &[Sine, Random]),
        ("decimals", p.decimals.is_some(), &[Sine, Random]),
        ("value", p.value.is_some(), &[Constant]),
    ];
    for (k, set, signals) in only_for {
        if set && !signals.contains(&p.signal) {
            let names: Vec<String> = signals.iter().map(|s| format!("{:?}", s.name())).collect();
            let plural = if names.len() > 1 { "s" } else { "" };
            errors.push(ConfigError::new(
                key(k),
                format!(
                    "`{k}` is only for signal{plural} {}, and this point's signal is {:?}",
                    names.join(" and "),
                    p.signal.name()
                ),
            ));
        }
    }

    let signal = match p.signal {
        Sine => {
            let period = p.period.unwrap_or(DEFAULT_PERIOD);
            if period.is_zero() {
                errors.push(ConfigError::new(key("period"), "must be greater than 0"));
            }
            Signal::Sine {
                period,
                range: check_range(at, &p, errors),
            }
        }
        Random => Signal::Random {
            range: check_range(at, &p, errors),
        },
        Counter => Signal::Counter,
        Constant => match &p.value {
            Some(Value::Float(f)) if !f.is_finite() => {
                errors.push(ConfigError::new(
                    key("value"),
                    format!("{f} is not a finite number, and JSON cannot carry it"),
                ));
                Signal::Constant(Value::Float(0.0))
            }
            Some(v) => Signal::Constant(v.clone()),
            None => {
                errors.push(ConfigError::new(
                    key("value"),
                    "missing: signal \"constant\" needs a `value` (an integer, float, bool \
                     or string)",
                ));
                Signal::Constant(Value::Int(0))
            }
        },
    };

    if errors.len() > before {
        return None;
    }
    Some(Point {
        name: p.name.into(),
        unit: p.unit.map(Into::into),
        device_class: p.device_class,
        state_class: p.state_class,
        signal,
    })
}

/// The `min`, `max` and `decimals` of a sine or random point, checked, defaults filled in.
fn check_range(at: &str, p: &PointConfig, errors: &mut Vec<ConfigError>) -> Range {
    let key = |k: &str| join_path(at, k);
    let mut finite = true;
    for (k, v) in [("min", p.min), ("max", p.max)] {
        if let Some(v) = v.filter(|v| !v.is_finite()) {
            errors.push(ConfigError::new(
                key(k),
                format!("{v} is not a finite number"),
            ));
            finite = false;
        }
    }
    let min = p.min.unwrap_or(DEFAULT_MIN);
    let max = p.max.unwrap_or(DEFAULT_MAX);
    if finite && min > max {
        // Name the key that was set: with the other left to its default, it is the one to fix.
        let k = if p.min.is_some() { "min" } else { "max" };
        errors.push(ConfigError::new(
            key(k),
            format!("min ({min}) is greater than max ({max})"),
        ));
    }
    let decimals = p.decimals.unwrap_or(DEFAULT_DECIMALS);
    if decimals > MAX_DECIMALS {
        errors.push(ConfigError::new(
            key("decimals"),
            format!(
                "{decimals} is too many: at most {MAX_DECIMALS} (an f64 holds about 15 digits)"
            ),
        ));
    }
    Range { min, max, decimals }
}

/// serde `deserialize_with` for `value`: any TOML scalar, as a reading [`Value`]. A TOML
/// date or time comes as its text (toml hands it to `visit_string`), and is published so.
fn de_opt_scalar<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    struct Scalar;

    impl Visitor<'_> for Scalar {
        type Value = Value;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an integer, float, bool or string")
        }

        fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
            Ok(Value::Bool(v))
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
            Ok(Value::Int(v))
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
            Ok(i64::try_from(v).map_or(Value::UInt(v), Value::Int))
        }

        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
            Ok(Value::Float(v))
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
            Ok(Value::Text(v.to_string()))
        }

        fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
            Ok(Value::Text(v))
        }
    }

    d.deserialize_any(Scalar).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fit_rounds_and_stays_in_range() {
        let r = Range {
            min: 0.004,
            max: 10.0,
            decimals: 2,
        };
        assert_eq!(r.fit(5.4321), 5.43);
        assert_eq!(r.fit(0.004), 0.004, "rounding must not step below min");
        assert_eq!(r.fit(9.999), 10.0);
        let r = Range {
            min: -1.0,
            max: 1.0,
            decimals: 0,
        };
        assert!(r.fit(-0.2).is_sign_positive(), "no -0.0");
    }
}
