//! What a device produces: a [`Reading`] of one point, with its [`Value`] and [`Quality`].

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use serde::Serialize;

/// The value of one reading. It becomes the `value` of the JSON payload: a number, a bool
/// or a string.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Value {
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Text(String),
}

impl Value {
    /// A float that JSON cannot carry (NaN, ±inf) is not a value to publish.
    pub fn is_publishable(&self) -> bool {
        match self {
            Value::Float(f) => f.is_finite(),
            _ => true,
        }
    }

    /// The value as f64, when it is a number.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Int(i) => Some(*i as f64),
            Value::UInt(u) => Some(*u as f64),
            Value::Float(f) => Some(*f),
            Value::Bool(_) | Value::Text(_) => None,
        }
    }

    /// Turn a JSON value into a reading value; `None` for null, arrays and objects.
    pub fn from_json(v: &serde_json::Value) -> Option<Value> {
        match v {
            serde_json::Value::Bool(b) => Some(Value::Bool(*b)),
            serde_json::Value::Number(n) => {
                if let Some(i) = n.as_i64() {
                    Some(Value::Int(i))
                } else if let Some(u) = n.as_u64() {
                    Some(Value::UInt(u))
                } else {
                    n.as_f64().map(Value::Float)
                }
            }
            serde_json::Value::String(s) => Some(Value::Text(s.clone())),
            _ => None,
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Bool(b) => write!(f, "{b}"),
            Value::Int(i) => write!(f, "{i}"),
            Value::UInt(u) => write!(f, "{u}"),
            Value::Float(x) => write!(f, "{x}"),
            Value::Text(s) => write!(f, "{s}"),
        }
    }
}

/// How far a reading can be trusted. Only `Good` and `Uncertain` readings are published
/// as values; a `Bad` one is counted and logged (a CRC failure, a sensor's power-on value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Quality {
    Good,
    Uncertain,
    Bad(String),
}

/// One value of one point of one device, at the time it was taken.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// The device's `name` from the config: the topic segment after the prefix.
    pub device: Arc<str>,
    /// The point's name: the last topic segment.
    pub point: Arc<str>,
    pub value: Value,
    /// The unit, when the point has one (`"°C"`); left out of the payload otherwise.
    pub unit: Option<Arc<str>>,
    /// When the value was taken (not when it was published).
    pub ts: SystemTime,
    pub quality: Quality,
}

impl Reading {
    /// A good reading taken now.
    pub fn new(device: Arc<str>, point: Arc<str>, value: Value) -> Reading {
        Reading {
            device,
            point,
            value,
            unit: None,
            ts: SystemTime::now(),
            quality: Quality::Good,
        }
    }

    pub fn with_unit(mut self, unit: Option<Arc<str>>) -> Reading {
        self.unit = unit;
        self
    }

    pub fn with_ts(mut self, ts: SystemTime) -> Reading {
        self.ts = ts;
        self
    }

    pub fn with_quality(mut self, quality: Quality) -> Reading {
        self.quality = quality;
        self
    }
}

/// RFC 3339 in UTC with exactly three fractional digits and `Z`:
/// `2026-11-22T02:46:03.123Z`, the contract's `ts`.
pub fn format_ts(ts: SystemTime) -> String {
    humantime::format_rfc3339_millis(ts).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn ts_has_three_fraction_digits_and_z() {
        let ts = UNIX_EPOCH + Duration::from_millis(1_795_315_563_123);
        assert_eq!(format_ts(ts), "2026-11-22T02:46:03.123Z");
        let whole = UNIX_EPOCH + Duration::from_secs(1_795_315_563);
        assert_eq!(format_ts(whole), "2026-11-22T02:46:03.000Z");
    }

    #[test]
    fn values_serialize_as_plain_json() {
        let j = |v: Value| serde_json::to_string(&v).unwrap();
        assert_eq!(j(Value::Bool(true)), "true");
        assert_eq!(j(Value::Int(-3)), "-3");
        assert_eq!(j(Value::Float(21.5)), "21.5");
        assert_eq!(j(Value::Text("on".into())), "\"on\"");
        assert!(!Value::Float(f64::NAN).is_publishable());
    }

    #[test]
    fn from_json_keeps_integers_integers() {
        assert_eq!(
            Value::from_json(&serde_json::json!(40)),
            Some(Value::Int(40))
        );
        assert_eq!(
            Value::from_json(&serde_json::json!(21.5)),
            Some(Value::Float(21.5))
        );
        assert_eq!(Value::from_json(&serde_json::json!(null)), None);
    }
}
