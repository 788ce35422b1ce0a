//! The keys of a onewire device: read with unknown keys refused, then checked, and every
//! problem reported with its key path (`point[1].sensor`), never a panic.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sensorgate_api::config::{check_name, de_opt_duration, join_path, parse_value};
use sensorgate_api::{ConfigError, DeviceSpec};
use serde::Deserialize;

use crate::sensor::{check_sensor_id, TEMPERATURE_FAMILIES};

/// `root` when a device leaves it out: where the Linux w1 bus shows its devices.
pub const DEFAULT_ROOT: &str = "/sys/bus/w1/devices";
/// `timeout` when a device leaves it out: a 12-bit DS18B20 conversion takes 750 ms, and
/// the kernel reads the sensors of one bus one after the other.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3);
/// `offline_after` when a device leaves it out.
pub const DEFAULT_OFFLINE_AFTER: u32 = 3;
/// `unit` when a point leaves it out.
pub const DEFAULT_UNIT: &str = "°C";
/// `device_class` when a point leaves it out (Home Assistant).
pub const DEFAULT_DEVICE_CLASS: &str = "temperature";
/// `state_class` when a point leaves it out (Home Assistant).
pub const DEFAULT_STATE_CLASS: &str = "measurement";

/// The keys of a device table besides the common ones.
const DEVICE_KEYS: &[&str] = &["root", "timeout", "offline_after", "point"];

/// The device table as first read. The points stay raw here so that each is parsed on its
/// own: a typo in `point[0]` does not hide the problems of `point[3]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeviceTable {
    root: Option<String>,
    #[serde(default, deserialize_with = "de_opt_duration")]
    timeout: Option<Duration>,
    offline_after: Option<u32>,
    /// Missing or empty: every sensor found under `root` is a point.
    #[serde(default)]
    point: Vec<toml::Value>,
}

/// One `[[device.point]]` table as written, before it is checked.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PointConfig {
    /// `[a-z0-9_-]+`, unique in the device: the last topic segment. A sensor id itself
    /// when `sensor` is left out.
    pub name: String,
    /// The sensor's folder name under `root` (`28-0316a2794bff`); default: `name`.
    pub sensor: Option<String>,
    /// `"°C"` (default), `"°F"` or `"K"`: the value is converted, and the unit is in the
    /// payload as written.
    pub unit: Option<String>,
    /// Added to the value (in `unit`) to calibrate the sensor.
    pub offset: Option<f64>,
    /// For Home Assistant discovery; default `"temperature"`, `""` for none.
    pub device_class: Option<String>,
    /// For Home Assistant discovery; default `"measurement"`, `""` for none.
    pub state_class: Option<String>,
}

/// The scale a value is published in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scale {
    Celsius,
    Fahrenheit,
    Kelvin,
}

impl Scale {
    /// The scale a `unit` names, if it is a temperature unit this plugin knows.
    pub fn of_unit(unit: &str) -> Option<Scale> {
        match unit {
            "°C" | "C" | "℃" => Some(Scale::Celsius),
            "°F" | "F" | "℉" => Some(Scale::Fahrenheit),
            "K" => Some(Scale::Kelvin),
            _ => None,
        }
    }

    /// `celsius` in this scale.
    pub fn from_celsius(self, celsius: f64) -> f64 {
        match self {
            Scale::Celsius => celsius,
            Scale::Fahrenheit => celsius * 1.8 + 32.0,
            Scale::Kelvin => celsius + 273.15,
        }
    }
}

/// A checked point, ready to run.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    /// The topic segment.
    pub name: Arc<str>,
    /// The sensor's folder name under `root`, lower case.
    pub sensor: String,
    /// The unit as written (published in the payload).
    pub unit: Arc<str>,
    pub scale: Scale,
    pub offset: f64,
    pub device_class: Option<String>,
    pub state_class: Option<String>,
}

impl Point {
    /// The point of a sensor found by auto-discovery: named by its id, defaults for all.
    pub fn auto(sensor: &str) -> Point {
        Point {
            name: sensor.into(),
            sensor: sensor.to_string(),
            unit: DEFAULT_UNIT.into(),
            scale: Scale::Celsius,
            offset: 0.0,
            device_class: Some(DEFAULT_DEVICE_CLASS.to_string()),
            state_class: Some(DEFAULT_STATE_CLASS.to_string()),
        }
    }

    /// The published value of a reading of `millis` thousandths of a degree Celsius:
    /// converted to the point's unit, offset added, rounded to 3 decimals.
    pub fn value(&self, millis: i64) -> f64 {
        let x = self.scale.from_celsius(millis as f64 / 1000.0) + self.offset;
        let rounded = (x * 1000.0).round() / 1000.0;
        // `+ 0.0` turns -0.0 into 0.0, which JSON shows as plain `0.0`.
        if rounded.is_finite() {
            rounded + 0.0
        } else {
            x
        }
    }
}

/// A onewire device, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct OnewireConfig {
    /// The folder that holds one folder per sensor.
    pub root: PathBuf,
    /// The longest wait for one sensor's read.
    pub timeout: Duration,
    /// Bad reads in a row after which a sensor counts as failing.
    pub offline_after: u32,
    /// The listed points; empty: every sensor found under `root`.
    pub points: Vec<Point>,
}

impl OnewireConfig {
    /// Whether the points are found under `root` at each poll rather than listed.
    pub fn discovers(&self) -> bool {
        self.points.is_empty()
    }

    /// Parse and check a device's table; every problem found, each with its key path.
    pub fn from_spec(spec: &DeviceSpec) -> Result<OnewireConfig, Vec<ConfigError>> {
        // Unknown device keys are named here, so that the points are still checked.
        let mut errors = Vec::new();
        let mut known = spec.table.clone();
        known.retain(|key, _| {
            let ok = DEVICE_KEYS.contains(&key);
            if !ok {
                errors.push(ConfigError::new(
                    key,
                    format!(
                        "unknown field `{key}`, expected one of {}",
                        DEVICE_KEYS
                            .iter()
                            .map(|k| format!("`{k}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
            ok
        });
        let table: DeviceTable = parse_value(toml::Value::Table(known)).map_err(|e| {
            errors.push(e.first_line());
            std::mem::take(&mut errors)
        })?;

        let root = match table.root {
            Some(r) if r.trim().is_empty() => {
                errors.push(ConfigError::new(
                    "root",
                    format!("must not be empty (default {DEFAULT_ROOT:?})"),
                ));
                PathBuf::from(DEFAULT_ROOT)
            }
            Some(r) => PathBuf::from(r),
            None => PathBuf::from(DEFAULT_ROOT),
        };
        let timeout = table.timeout.unwrap_or(DEFAULT_TIMEOUT);
        if timeout.is_zero() {
            errors.push(ConfigError::new("timeout", "must be greater than 0"));
        }
        let offline_after = table.offline_after.unwrap_or(DEFAULT_OFFLINE_AFTER);
        if offline_after == 0 {
            errors.push(ConfigError::new(
                "offline_after",
                "must be at least 1 (bad reads in a row before a sensor counts as failing)",
            ));
        }

        let mut names: HashMap<String, usize> = HashMap::new();
        let mut sensors: HashMap<String, usize> = HashMap::new();
        let mut points = Vec::with_capacity(table.point.len());
        for (i, raw) in table.point.into_iter().enumerate() {
            let at = format!("point[{i}]");
            // Duplicates are looked for in the raw table, so that a point with other
            // problems still counts.
            if let Some(name) = raw.get("name").and_then(toml::Value::as_str) {
                if let Some(first) = names.get(name) {
                    errors.push(ConfigError::new(
                        join_path(&at, "name"),
                        format!("duplicate point name {name:?}: point[{first}] has it too"),
                    ));
                } else {
                    names.insert(name.to_string(), i);
                }
            }
            let p: PointConfig = match sensorgate_api::config::parse_table(raw) {
                Ok(p) => p,
                Err(e) => {
                    errors.push(e.under(&at));
                    continue;
                }
            };
            let key = if p.sensor.is_some() { "sensor" } else { "name" };
            let Some(point) = check_point(&at, p, &mut errors) else {
                continue;
            };
            if let Some(first) = sensors.get(&point.sensor) {
                errors.push(ConfigError::new(
                    join_path(&at, key),
                    format!(
                        "sensor {:?} is already read by point[{first}]: one point per sensor",
                        point.sensor
                    ),
                ));
                continue;
            }
            sensors.insert(point.sensor.clone(), i);
            points.push(point);
        }
        if errors.is_empty() {
            Ok(OnewireConfig {
                root,
                timeout,
                offline_after,
                points,
            })
        } else {
            Err(errors)
        }
    }
}

/// `Some(x)` unless `x` is empty (`device_class = ""` turns the default off).
fn non_empty(x: String) -> Option<String> {
    (!x.is_empty()).then_some(x)
}

/// Check one parsed point; push its problems and return it only if it has none.
fn check_point(at: &str, p: PointConfig, errors: &mut Vec<ConfigError>) -> Option<Point> {
    let before = errors.len();
    let key = |k: &str| join_path(at, k);

    if let Err(e) = check_name(&p.name) {
        errors.push(ConfigError::new(key("name"), e));
    }
    let sensor = match &p.sensor {
        Some(s) => match check_sensor_id(s) {
            Ok(id) => id,
            Err(e) => {
                errors.push(ConfigError::new(key("sensor"), e));
                String::new()
            }
        },
        None => match check_sensor_id(&p.name) {
            Ok(id) => id,
            Err(_) => {
                errors.push(ConfigError::new(
                    key("sensor"),
                    format!(
                        "missing: point {:?} is not named by a sensor id, so it needs \
                         `sensor = \"<id>\"`, the sensor's folder name under root \
                         (like \"28-0316a2794bff\"; families {})",
                        p.name,
                        TEMPERATURE_FAMILIES.join(", ")
                    ),
                ));
                String::new()
            }
        },
    };
    let unit = p.unit.unwrap_or_else(|| DEFAULT_UNIT.to_string());
    let scale = match Scale::of_unit(&unit) {
        Some(s) => s,
        None => {
            errors.push(ConfigError::new(
                key("unit"),
                format!(
                    "{unit:?} is not a temperature unit: use \"°C\" (default), \"°F\" or \"K\" \
                     (the value is converted)"
                ),
            ));
            Scale::Celsius
        }
    };
    let offset = p.offset.unwrap_or(0.0);
    if !offset.is_finite() {
        errors.push(ConfigError::new(
            key("offset"),
            format!("{offset} is not a finite number"),
        ));
    }

    if errors.len() > before {
        return None;
    }
    Some(Point {
        name: p.name.into(),
        sensor,
        unit: unit.into(),
        scale,
        offset,
        device_class: p
            .device_class
            .map_or(Some(DEFAULT_DEVICE_CLASS.to_string()), non_empty),
        state_class: p
            .state_class
            .map_or(Some(DEFAULT_STATE_CLASS.to_string()), non_empty),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(unit: &str, offset: f64) -> Point {
        Point {
            unit: unit.into(),
            scale: Scale::of_unit(unit).unwrap(),
            offset,
            ..Point::auto("28-0316a2794bff")
        }
    }

    #[test]
    fn values_are_converted_offset_and_rounded() {
        assert_eq!(point("°C", 0.0).value(23125), 23.125);
        assert_eq!(point("°C", 0.0).value(-10250), -10.25);
        assert_eq!(point("°C", -0.3).value(23125), 22.825);
        assert_eq!(point("°F", 0.0).value(0), 32.0);
        assert_eq!(point("°F", 0.0).value(-40000), -40.0);
        assert_eq!(point("K", 0.0).value(25000), 298.15);
        assert!(point("°C", 0.0).value(-0).is_sign_positive());
        assert!(point("°C", 0.1).value(-100).is_sign_positive(), "no -0.0");
    }
}
