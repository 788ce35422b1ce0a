//! The line protocol (protocol 1, `PROTOCOL.md`): one JSON object a line, in one of two
//! forms, turned into readings; and the log level a line on standard error asks for.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sensorgate_api::config::check_name;
use sensorgate_api::Value;

/// The protocol version this plugin speaks; the program sees it as `SENSORGATE_PROTOCOL`.
pub const PROTOCOL_VERSION: u32 = 1;

/// An epoch `ts` above this is taken for milliseconds by mistake (it is the year 5138 in
/// seconds) and refused.
const MAX_EPOCH_SECONDS: f64 = 1e11;

/// Point names a program may not use: `<prefix>/<device>/availability` is the device's
/// own topic (online/offline), not a point.
pub const RESERVED_POINTS: &[&str] = &["availability"];

/// One reading read from a line, before the device name is put on it.
#[derive(Debug, Clone, PartialEq)]
pub struct LineReading {
    pub point: Arc<str>,
    pub value: Value,
    pub unit: Option<Arc<str>>,
    pub ts: SystemTime,
}

/// Why a line is not protocol 1. The line is skipped and counted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    #[error("not JSON ({0})")]
    NotJson(String),
    #[error("not a JSON object (a line is one object: {{\"temperature\": 21.5}})")]
    NotObject,
    #[error("an empty object has no reading")]
    Empty,
    #[error(
        "key {0:?} is not allowed beside \"point\" and \"value\" (only \"unit\" and \"ts\" are)"
    )]
    ExtraKey(String),
    #[error("\"point\" must be a string")]
    PointNotString,
    #[error("bad point name: {0}")]
    BadName(String),
    #[error("point name {0:?} is reserved (<prefix>/<device>/{0} is the device's own topic)")]
    Reserved(String),
    #[error("point {0:?}: the value must be a number, a bool or a string, not {1}")]
    BadValue(String, &'static str),
    #[error("\"unit\" must be a string")]
    BadUnit,
    #[error("\"ts\": {0}")]
    BadTs(String),
    #[error("longer than {0} bytes")]
    TooLong(usize),
    #[error("not UTF-8")]
    NotUtf8,
}

/// Parse one line of a program's standard output. `Ok(empty)` for a blank line (skipped,
/// not counted); otherwise every reading of the line (all of them or none: a bad key
/// makes the whole line bad). Readings without `ts` get `now`.
pub fn parse_line(line: &str, now: SystemTime) -> Result<Vec<LineReading>, LineError> {
    let line = line.trim();
    if line.is_empty() {
        return Ok(Vec::new());
    }
    let json: serde_json::Value =
        serde_json::from_str(line).map_err(|e| LineError::NotJson(e.to_string()))?;
    let serde_json::Value::Object(obj) = json else {
        return Err(LineError::NotObject);
    };
    if obj.is_empty() {
        return Err(LineError::Empty);
    }
    if obj.contains_key("point") && obj.contains_key("value") {
        // One reading: {"point": "temperature", "value": 21.5, "unit": "°C", "ts": "…"}
        if let Some(k) = obj
            .keys()
            .find(|k| !matches!(k.as_str(), "point" | "value" | "unit" | "ts"))
        {
            return Err(LineError::ExtraKey(k.clone()));
        }
        let point = obj
            .get("point")
            .and_then(|p| p.as_str())
            .ok_or(LineError::PointNotString)?;
        check_point(point)?;
        let value = value_of(point, obj.get("value"))?;
        let unit = match obj.get("unit") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(u)) if u.is_empty() => None,
            Some(serde_json::Value::String(u)) => Some(Arc::from(u.as_str())),
            Some(_) => return Err(LineError::BadUnit),
        };
        let ts = match obj.get("ts") {
            None | Some(serde_json::Value::Null) => now,
            Some(ts) => parse_ts(ts).map_err(LineError::BadTs)?,
        };
        return Ok(vec![LineReading {
            point: point.into(),
            value,
            unit,
            ts,
        }]);
    }
    // Every key a point: {"temperature": 21.5, "humidity": 40}
    let mut out = Vec::with_capacity(obj.len());
    for (point, v) in &obj {
        check_point(point)?;
        out.push(LineReading {
            point: point.as_str().into(),
            value: value_of(point, Some(v))?,
            unit: None,
            ts: now,
        });
    }
    Ok(out)
}

fn check_point(name: &str) -> Result<(), LineError> {
    check_name(name).map_err(LineError::BadName)?;
    if RESERVED_POINTS.contains(&name) {
        return Err(LineError::Reserved(name.to_string()));
    }
    Ok(())
}

fn value_of(point: &str, v: Option<&serde_json::Value>) -> Result<Value, LineError> {
    let v = v.unwrap_or(&serde_json::Value::Null);
    Value::from_json(v).ok_or_else(|| {
        let kind = match v {
            serde_json::Value::Null => "null",
            serde_json::Value::Array(_) => "an array",
            _ => "an object",
        };
        LineError::BadValue(point.to_string(), kind)
    })
}

/// `ts`: an RFC 3339 string (`2026-11-22T02:46:03.123Z`, any offset such as `+01:00`), or
/// a number of seconds since 1970 (`1795315563.123`, Python's `time.time()`).
pub fn parse_ts(v: &serde_json::Value) -> Result<SystemTime, String> {
    match v {
        serde_json::Value::String(s) => parse_rfc3339(s.trim()),
        serde_json::Value::Number(n) => {
            let secs = n.as_f64().unwrap_or(f64::NAN);
            if !secs.is_finite() || secs < 0.0 {
                return Err(format!("{n} is not a time"));
            }
            if secs > MAX_EPOCH_SECONDS {
                return Err(format!(
                    "{n} is too large for seconds since 1970 (milliseconds? divide by 1000)"
                ));
            }
            Ok(UNIX_EPOCH + Duration::from_secs_f64(secs))
        }
        _ => Err("must be an RFC 3339 string or seconds since 1970".into()),
    }
}

/// RFC 3339 with `Z` or a numeric offset.
fn parse_rfc3339(s: &str) -> Result<SystemTime, String> {
    let bad = |e: &dyn std::fmt::Display| {
        format!("{s:?} is not an RFC 3339 time ({e}); write e.g. \"2026-11-22T02:46:03.123Z\"")
    };
    // A numeric offset other than +00:00 (which humantime takes): `…+01:00`, `…-05:30`.
    let b = s.as_bytes();
    if b.len() > 6 && s.is_char_boundary(b.len() - 6) {
        let (head, off) = s.split_at(s.len() - 6);
        let ob = off.as_bytes();
        if (ob[0] == b'+' || ob[0] == b'-') && ob[3] == b':' && off != "+00:00" {
            let digits = |x: &[u8]| -> Option<u64> {
                x.iter().try_fold(0u64, |acc, c| {
                    c.is_ascii_digit().then(|| acc * 10 + u64::from(c - b'0'))
                })
            };
            let (Some(h), Some(m)) = (digits(&ob[1..3]), digits(&ob[4..6])) else {
                return Err(bad(&"bad offset"));
            };
            if h > 23 || m > 59 {
                return Err(bad(&"bad offset"));
            }
            let local = humantime::parse_rfc3339(&format!("{head}Z")).map_err(|e| bad(&e))?;
            let offset = Duration::from_secs(h * 3600 + m * 60);
            // local = utc + offset for `+`; utc = local - offset.
            let utc = if ob[0] == b'+' {
                local.checked_sub(offset)
            } else {
                local.checked_add(offset)
            };
            return utc.ok_or_else(|| bad(&"out of range"));
        }
    }
    humantime::parse_rfc3339(s).map_err(|e| bad(&e))
}

/// The level a line on the program's standard error asks for, and the message without
/// the prefix: `E!` error, `W!` warning, `I!` info, `D!` debug; no prefix: info.
pub fn stderr_level(line: &str) -> (log::Level, &str) {
    let level = match line.get(..2) {
        Some("E!") => log::Level::Error,
        Some("W!") => log::Level::Warn,
        Some("I!") => log::Level::Info,
        Some("D!") => log::Level::Debug,
        _ => return (log::Level::Info, line),
    };
    let rest = &line[2..];
    (level, rest.strip_prefix(' ').unwrap_or(rest))
}

/// At most `max` bytes of `s`, cut on a character boundary, for a log line.
pub fn excerpt(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use sensorgate_api::format_ts;

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_795_315_563)
    }

    #[test]
    fn the_single_form_is_one_reading() {
        let r = parse_line(
            r#"{"point": "temperature", "value": 21.5, "unit": "°C", "ts": "2026-11-22T02:46:03.123Z"}"#,
            now(),
        )
        .unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(&*r[0].point, "temperature");
        assert_eq!(r[0].value, Value::Float(21.5));
        assert_eq!(r[0].unit.as_deref(), Some("°C"));
        assert_eq!(format_ts(r[0].ts), "2026-11-22T02:46:03.123Z");
        let r = parse_line(r#"{"value": true, "point": "door"}"#, now()).unwrap();
        assert_eq!(r[0].value, Value::Bool(true));
        assert_eq!(r[0].ts, now());
        assert_eq!(r[0].unit, None);
    }

    #[test]
    fn the_object_form_is_one_reading_per_key() {
        let r = parse_line(
            r#"{"temperature": 21.5, "humidity": 40, "state": "ok", "on": false}"#,
            now(),
        )
        .unwrap();
        let got: Vec<(&str, &Value)> = r.iter().map(|r| (&*r.point, &r.value)).collect();
        assert_eq!(got.len(), 4);
        assert!(got.contains(&("humidity", &Value::Int(40))));
        assert!(got.contains(&("state", &Value::Text("ok".into()))));
        assert!(got.contains(&("on", &Value::Bool(false))));
        assert!(r.iter().all(|r| r.ts == now() && r.unit.is_none()));
        // `point` alone, without `value`, is just a point called "point".
        let r = parse_line(r#"{"point": 3}"#, now()).unwrap();
        assert_eq!((&*r[0].point, &r[0].value), ("point", &Value::Int(3)));
    }

    #[test]
    fn bad_lines_say_why() {
        let e = |l: &str| parse_line(l, now()).unwrap_err();
        assert!(matches!(e("temperature=21.5"), LineError::NotJson(_)));
        assert_eq!(e("[1, 2]"), LineError::NotObject);
        assert_eq!(e("21.5"), LineError::NotObject);
        assert_eq!(e("{}"), LineError::Empty);
        assert_eq!(
            e(r#"{"point": "t", "value": 1, "colour": "red"}"#),
            LineError::ExtraKey("colour".into())
        );
        assert_eq!(e(r#"{"point": 1, "value": 1}"#), LineError::PointNotString);
        assert!(matches!(e(r#"{"Temperature": 1}"#), LineError::BadName(_)));
        assert!(matches!(e(r#"{"a/b": 1}"#), LineError::BadName(_)));
        assert_eq!(
            e(r#"{"availability": "online"}"#),
            LineError::Reserved("availability".into())
        );
        assert_eq!(
            e(r#"{"point": "availability", "value": 1}"#),
            LineError::Reserved("availability".into())
        );
        assert_eq!(
            e(r#"{"t": 1, "x": {"y": 2}}"#),
            LineError::BadValue("x".into(), "an object")
        );
        assert_eq!(
            e(r#"{"point": "t", "value": null}"#),
            LineError::BadValue("t".into(), "null")
        );
        assert_eq!(
            e(r#"{"point": "t", "value": 1, "unit": 3}"#),
            LineError::BadUnit
        );
        assert!(matches!(
            e(r#"{"point": "t", "value": 1, "ts": "yesterday"}"#),
            LineError::BadTs(_)
        ));
        assert!(matches!(
            e(r#"{"point": "t", "value": 1, "ts": 1795315563123}"#),
            LineError::BadTs(m) if m.contains("milliseconds")
        ));
        assert!(parse_line("   ", now()).unwrap().is_empty());
    }

    #[test]
    fn ts_takes_offsets_and_epoch_seconds() {
        let at = |v: serde_json::Value| format_ts(parse_ts(&v).unwrap());
        assert_eq!(
            at(serde_json::json!("2026-11-22T03:46:03.123+01:00")),
            "2026-11-22T02:46:03.123Z"
        );
        assert_eq!(
            at(serde_json::json!("2026-11-21T21:16:03.5-05:30")),
            "2026-11-22T02:46:03.500Z"
        );
        assert_eq!(
            at(serde_json::json!("2026-11-22T02:46:03.123456+00:00")),
            "2026-11-22T02:46:03.123Z"
        );
        assert_eq!(
            at(serde_json::json!(1_795_315_563.25)),
            "2026-11-22T02:46:03.250Z"
        );
        assert_eq!(
            at(serde_json::json!(1_795_315_563)),
            "2026-11-22T02:46:03.000Z"
        );
        assert!(parse_ts(&serde_json::json!("2026-11-22T03:46:03+25:00")).is_err());
        assert!(parse_ts(&serde_json::json!(-1)).is_err());
        assert!(parse_ts(&serde_json::json!(true)).is_err());
    }

    #[test]
    fn stderr_prefixes_pick_the_level() {
        use log::Level;
        assert_eq!(
            stderr_level("E! sensor gone"),
            (Level::Error, "sensor gone")
        );
        assert_eq!(stderr_level("W!checksum"), (Level::Warn, "checksum"));
        assert_eq!(stderr_level("I! started"), (Level::Info, "started"));
        assert_eq!(stderr_level("D! raw 0x1f"), (Level::Debug, "raw 0x1f"));
        assert_eq!(
            stderr_level("Traceback (most recent call last):"),
            (Level::Info, "Traceback (most recent call last):")
        );
        assert_eq!(stderr_level("E"), (Level::Info, "E"));
        assert_eq!(stderr_level("é!x"), (Level::Info, "é!x"));
    }

    #[test]
    fn excerpts_cut_on_char_boundaries() {
        assert_eq!(excerpt("abc", 5), "abc");
        assert_eq!(excerpt("ééé", 3), "é…");
    }
}
