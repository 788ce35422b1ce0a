//! Home Assistant MQTT discovery (`[homeassistant]`): one HA device per sensorgate device,
//! announced with the device-based discovery message, via the gateway's own HA device.
//!
//! - Topic `<discovery_prefix>/device/<object_id>/config`, retained; `object_id` is
//!   `sensorgate_<gateway id>_<device>` (lower case, `[a-z0-9_]`). The gateway itself is
//!   the HA device `sensorgate_<gateway id>` with one `binary_sensor` (connectivity) on
//!   `<prefix>/status`; every device names it as `via_device`.
//! - One component per point, keyed by the point name: `sensor` (numbers and text),
//!   `binary_sensor` (bools); a writable point is a `number` or a `switch` with the
//!   point's `/set` topic as `command_topic`. `unique_id` is `<object_id>_<point>`.
//!   Values come from the reading's JSON (`{{ value_json.value }}`); `unit_of_measurement`
//!   from the reading, `device_class` / `state_class` from the point's config.
//! - Availability: the device's `…/availability` and the gateway's `…/status`, both
//!   `online`/`offline`, `availability_mode: all`.
//! - A device is announced after its first good reading, and again whenever a point
//!   appears or changes kind (plugins such as `serial` learn points from the lines).
//!   Everything announced is sent again when `<discovery_prefix>/status` says `online`
//!   (HA's birth message).
//! - A device that has left the config is removed: an empty retained config, at start
//!   and on every HA birth. The announced devices are remembered in
//!   `<state_dir>/homeassistant.json` for that; the embedded broker keeps no retained
//!   messages across restarts, so HA may be told again after it reconnects.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sensorgate_api::{PointInfo, Quality, Reading, Value};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value as Json};

use crate::broker::Message;
use crate::config::{Config, HomeAssistantConfig};
use crate::publish::Topics;

/// The file in `state_dir` that remembers which HA devices were announced.
pub const STATE_FILE: &str = "homeassistant.json";

/// What a point publishes, as far as HA cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Number,
    Bool,
    Text,
}

impl Kind {
    fn of(v: &Value) -> Kind {
        match v {
            Value::Bool(_) => Kind::Bool,
            Value::Int(_) | Value::UInt(_) | Value::Float(_) => Kind::Number,
            Value::Text(_) => Kind::Text,
        }
    }
}

/// A point seen in a good reading.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    kind: Kind,
    unit: Option<Arc<str>>,
}

/// One configured device.
#[derive(Debug)]
struct Device {
    plugin: String,
    /// The points its config lists, by name (for device_class, state_class, writable).
    configured: HashMap<String, PointInfo>,
    /// Points seen so far, in name order.
    seen: BTreeMap<Arc<str>, Seen>,
    /// Announced since start (its config message is in `payloads`).
    announced: bool,
}

/// What `homeassistant.json` holds.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Remembered {
    /// Object ids announced and still configured.
    #[serde(default)]
    announced: BTreeSet<String>,
    /// Object ids announced once whose device has left the config.
    #[serde(default)]
    removed: BTreeSet<String>,
}

/// The discovery state of one gateway.
#[derive(Debug)]
pub struct Discovery {
    prefix: String,
    topics: Topics,
    gateway_id: String,
    gateway_object: String,
    devices: HashMap<Arc<str>, Device>,
    remembered: Remembered,
    state_file: PathBuf,
}

/// `[a-z0-9_]` only: HA's object ids and unique ids.
fn slug(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect()
}

impl Discovery {
    /// Discovery for `config`; loads what earlier runs announced from `state_dir`.
    pub fn new(config: &Config) -> Discovery {
        let gateway_id = config.gateway.id.clone();
        let gateway_object = format!("sensorgate_{}", slug(&gateway_id));
        let devices = config
            .devices
            .iter()
            .map(|d| {
                let device = Device {
                    plugin: d.spec.plugin.clone(),
                    configured: d
                        .points
                        .iter()
                        .map(|p| (p.name.clone(), p.clone()))
                        .collect(),
                    seen: BTreeMap::new(),
                    announced: false,
                };
                (d.spec.name.clone(), device)
            })
            .collect();
        let state_file = config.gateway.state_dir.join(STATE_FILE);
        Discovery {
            prefix: config.homeassistant.discovery_prefix.clone(),
            topics: Topics::new(&config.gateway.topic_prefix),
            gateway_id,
            gateway_object,
            devices,
            remembered: load(&state_file),
            state_file,
        }
    }

    /// `<discovery_prefix>/status`: HA's birth and last will.
    pub fn status_topic(cfg: &HomeAssistantConfig) -> String {
        format!("{}/status", cfg.discovery_prefix)
    }

    fn object_id(&self, device: &str) -> String {
        format!("{}_{}", self.gateway_object, slug(device))
    }

    fn config_topic(&self, object_id: &str) -> String {
        format!("{}/device/{object_id}/config", self.prefix)
    }

    /// The messages to send at start: the gateway's own HA device, and the removal of
    /// devices that have left the config.
    pub fn start(&mut self) -> Vec<Message> {
        let configured: BTreeSet<String> = self.devices.keys().map(|d| self.object_id(d)).collect();
        let gone: Vec<String> = self
            .remembered
            .announced
            .difference(&configured)
            .cloned()
            .collect();
        for id in gone {
            self.remembered.announced.remove(&id);
            self.remembered.removed.insert(id);
        }
        // A device back in the config is no longer removed.
        self.remembered
            .removed
            .retain(|id| !configured.contains(id));
        self.save();
        let mut out = vec![self.gateway_message()];
        out.extend(self.removals());
        out
    }

    /// Everything again, for HA's birth message: the gateway, every device announced so
    /// far, and the removals.
    pub fn rebirth(&self) -> Vec<Message> {
        let mut out = vec![self.gateway_message()];
        let mut names: Vec<&Arc<str>> = self
            .devices
            .iter()
            .filter(|(_, d)| d.announced)
            .map(|(n, _)| n)
            .collect();
        names.sort();
        for name in names {
            out.extend(self.device_message(name));
        }
        out.extend(self.removals());
        out
    }

    /// Look at a batch of readings: the config messages of devices that have a new point
    /// (or a point that changed kind or unit). Bad readings are not looked at.
    pub fn observe(&mut self, readings: &[Reading]) -> Vec<Message> {
        let mut changed: BTreeSet<Arc<str>> = BTreeSet::new();
        for r in readings {
            if !matches!(r.quality, Quality::Good) || !r.value.is_publishable() {
                continue;
            }
            let Some(device) = self.devices.get_mut(&r.device) else {
                continue;
            };
            let seen = Seen {
                kind: Kind::of(&r.value),
                unit: r.unit.clone(),
            };
            if device.seen.get(&r.point) != Some(&seen) {
                device.seen.insert(r.point.clone(), seen);
                changed.insert(r.device.clone());
            }
        }
        let mut out = Vec::new();
        let mut remember = false;
        for name in changed {
            if let Some(m) = self.device_message(&name) {
                out.push(m);
            }
            let id = self.object_id(&name);
            if let Some(d) = self.devices.get_mut(&name) {
                d.announced = true;
            }
            remember |= self.remembered.announced.insert(id);
        }
        if remember {
            self.save();
        }
        out
    }

    fn removals(&self) -> Vec<Message> {
        self.remembered
            .removed
            .iter()
            .map(|id| Message::new(self.config_topic(id), Vec::new(), true))
            .collect()
    }

    fn origin() -> Json {
        json!({
            "name": "sensorgate",
            "sw": env!("CARGO_PKG_VERSION"),
            "url": env!("CARGO_PKG_REPOSITORY"),
        })
    }

    /// The gateway's own HA device: one connectivity sensor on `<prefix>/status`.
    fn gateway_message(&self) -> Message {
        let id = &self.gateway_object;
        let payload = json!({
            "dev": {
                "ids": [id],
                "name": format!("sensorgate {}", self.gateway_id),
                "mf": "sensorgate",
                "mdl": "gateway",
                "sw": env!("CARGO_PKG_VERSION"),
            },
            "o": Self::origin(),
            "cmps": {
                "status": {
                    "p": "binary_sensor",
                    "name": "status",
                    "unique_id": format!("{id}_status"),
                    "device_class": "connectivity",
                    "entity_category": "diagnostic",
                    "state_topic": self.topics.status(),
                    "payload_on": "online",
                    "payload_off": "offline",
                },
            },
            "qos": 1,
        });
        Message::new(self.config_topic(id), to_vec(&payload), true)
    }

    /// The device-based config message of `name`, with every point seen so far.
    fn device_message(&self, name: &str) -> Option<Message> {
        let device = self.devices.get(name)?;
        let id = self.object_id(name);
        let mut components = Map::new();
        for (point, seen) in &device.seen {
            let info = device.configured.get(&**point);
            components.insert(
                point.to_string(),
                self.component(name, point, seen, info, &id),
            );
        }
        let payload = json!({
            "dev": {
                "ids": [id],
                "name": name,
                "mf": "sensorgate",
                "mdl": device.plugin,
                "via_device": self.gateway_object,
            },
            "o": Self::origin(),
            "cmps": components,
            "availability": [
                { "topic": self.topics.availability(name) },
                { "topic": self.topics.status() },
            ],
            "availability_mode": "all",
            "payload_available": "online",
            "payload_not_available": "offline",
            "qos": 1,
        });
        Some(Message::new(self.config_topic(&id), to_vec(&payload), true))
    }

    fn component(
        &self,
        device: &str,
        point: &str,
        seen: &Seen,
        info: Option<&PointInfo>,
        object_id: &str,
    ) -> Json {
        let writable = info.is_some_and(|i| i.writable);
        let platform = match (seen.kind, writable) {
            (Kind::Bool, false) => "binary_sensor",
            (Kind::Bool, true) => "switch",
            (Kind::Number, true) => "number",
            _ => "sensor",
        };
        let mut c = Map::new();
        c.insert("p".into(), platform.into());
        c.insert("name".into(), point.into());
        c.insert(
            "unique_id".into(),
            format!("{object_id}_{}", slug(point)).into(),
        );
        c.insert(
            "state_topic".into(),
            self.topics.point(device, point).into(),
        );
        let template = match seen.kind {
            Kind::Bool => "{{ 'ON' if value_json.value else 'OFF' }}",
            _ => "{{ value_json.value }}",
        };
        c.insert("value_template".into(), template.into());
        if writable {
            c.insert(
                "command_topic".into(),
                format!("{}/set", self.topics.point(device, point)).into(),
            );
            if seen.kind == Kind::Bool {
                c.insert("payload_on".into(), "true".into());
                c.insert("payload_off".into(), "false".into());
                c.insert("state_on".into(), "ON".into());
                c.insert("state_off".into(), "OFF".into());
            }
        }
        if seen.kind == Kind::Number {
            if let Some(unit) = &seen.unit {
                c.insert("unit_of_measurement".into(), unit.to_string().into());
            }
        }
        let (mut device_class, mut state_class) = info
            .map(|i| (i.device_class.clone(), i.state_class.clone()))
            .unwrap_or_default();
        // A point the config does not list (plugins that find their points, such as
        // onewire or serial): a temperature unit says what it is.
        let temperature = matches!(seen.unit.as_deref(), Some("°C" | "°F" | "K"));
        if info.is_none() && seen.kind == Kind::Number && temperature {
            device_class = Some("temperature".into());
            state_class = Some("measurement".into());
        }
        // An empty class in the config means none.
        if let Some(dc) = device_class.filter(|d| !d.is_empty()) {
            c.insert("device_class".into(), dc.into());
        }
        if let Some(sc) = state_class.filter(|s| !s.is_empty()) {
            c.insert("state_class".into(), sc.into());
        }
        Json::Object(c)
    }

    fn save(&self) {
        if let Err(e) = save(&self.state_file, &self.remembered) {
            log::warn!(
                "cannot write {}: {e}; a device removed from the config may stay in \
                 Home Assistant",
                self.state_file.display()
            );
        }
    }
}

fn to_vec(v: &Json) -> Vec<u8> {
    // Serializing a JSON value to a Vec cannot fail.
    serde_json::to_vec(v).unwrap_or_default()
}

fn load(path: &Path) -> Remembered {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text).unwrap_or_else(|e| {
            log::warn!(
                "{}: {e}; starting with no remembered Home Assistant devices",
                path.display()
            );
            Remembered::default()
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Remembered::default(),
        Err(e) => {
            log::warn!("cannot read {}: {e}", path.display());
            Remembered::default()
        }
    }
}

/// Write atomically: a temp file beside it, then rename.
fn save(path: &Path, r: &Remembered) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    let text = serde_json::to_vec_pretty(r).map_err(std::io::Error::other)?;
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_are_ha_object_ids() {
        assert_eq!(slug("pi-Living.room"), "pi_living_room");
        assert_eq!(slug("boiler_2"), "boiler_2");
    }

    fn point(name: &str, writable: bool) -> PointInfo {
        PointInfo {
            name: name.into(),
            unit: None,
            writable,
            device_class: None,
            state_class: None,
            source: String::new(),
        }
    }

    /// Discovery for gateway `gw` (topic prefix `sg`) with one modbus device `boiler`.
    fn boiler(points: Vec<PointInfo>, dir: &Path) -> Discovery {
        let configured = points.into_iter().map(|p| (p.name.clone(), p)).collect();
        Discovery {
            prefix: "homeassistant".into(),
            topics: Topics::new("sg"),
            gateway_id: "gw".into(),
            gateway_object: "sensorgate_gw".into(),
            devices: HashMap::from([(
                Arc::from("boiler"),
                Device {
                    plugin: "modbus".into(),
                    configured,
                    seen: BTreeMap::new(),
                    announced: false,
                },
            )]),
            remembered: Remembered::default(),
            state_file: dir.join(STATE_FILE),
        }
    }

    #[test]
    fn writable_points_get_a_command_topic() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut d = boiler(
            vec![point("setpoint", true), point("pump", true)],
            dir.path(),
        );
        let readings = [
            Reading::new("boiler".into(), "setpoint".into(), Value::Float(55.0))
                .with_unit(Some("°C".into())),
            Reading::new("boiler".into(), "pump".into(), Value::Bool(true)),
        ];
        let out = d.observe(&readings);
        assert_eq!(out.len(), 1);
        assert_eq!(
            out[0].topic,
            "homeassistant/device/sensorgate_gw_boiler/config"
        );
        let c: Json = serde_json::from_slice(&out[0].payload).expect("json");
        let sp = &c["cmps"]["setpoint"];
        assert_eq!(sp["p"], "number");
        assert_eq!(sp["command_topic"], "sg/boiler/setpoint/set");
        assert_eq!(sp["unit_of_measurement"], "°C");
        let pump = &c["cmps"]["pump"];
        assert_eq!(pump["p"], "switch");
        assert_eq!(pump["command_topic"], "sg/boiler/pump/set");
        assert_eq!(pump["payload_on"], "true");
        assert_eq!(pump["state_on"], "ON");
        // The same points again: nothing new to announce.
        assert!(d.observe(&readings).is_empty());

        // A point the config does not list, with a temperature unit (a 1-wire sensor
        // found at run time): a temperature measurement.
        let found = Reading::new(
            "boiler".into(),
            "28-0316a2794bff".into(),
            Value::Float(21.1),
        )
        .with_unit(Some("°C".into()));
        let out = d.observe(&[found]);
        let c: Json = serde_json::from_slice(&out[0].payload).expect("json");
        let t = &c["cmps"]["28-0316a2794bff"];
        assert_eq!(t["device_class"], "temperature");
        assert_eq!(t["state_class"], "measurement");
        assert!(c["cmps"]["setpoint"].get("device_class").is_none());
        assert!(dir.path().join(STATE_FILE).exists());
    }

    /// The figure of the issue: a 20-point device is one config message (plus the
    /// gateway's own); `cargo test --lib twenty -- --nocapture` prints the sizes.
    #[test]
    fn a_twenty_point_device_is_one_message() {
        let dir = tempfile::tempdir().expect("tempdir");
        let points = (0..20)
            .map(|i| {
                let mut p = point(&format!("temperature_{i:02}"), false);
                p.device_class = Some("temperature".into());
                p.state_class = Some("measurement".into());
                p
            })
            .collect();
        let mut d = boiler(points, dir.path());
        let readings: Vec<Reading> = (0..20)
            .map(|i| {
                Reading::new(
                    "boiler".into(),
                    format!("temperature_{i:02}").into(),
                    Value::Float(21.5),
                )
                .with_unit(Some("°C".into()))
            })
            .collect();
        let out = d.observe(&readings);
        assert_eq!(out.len(), 1);
        let c: Json = serde_json::from_slice(&out[0].payload).expect("json");
        assert_eq!(c["cmps"].as_object().map(|m| m.len()), Some(20));
        let gateway = d.gateway_message();
        println!(
            "20-point device: {} config message of {} bytes; gateway: 1 of {} bytes",
            out.len(),
            out[0].payload.len(),
            gateway.payload.len()
        );
    }

    #[test]
    fn kinds() {
        assert_eq!(Kind::of(&Value::Float(1.0)), Kind::Number);
        assert_eq!(Kind::of(&Value::UInt(1)), Kind::Number);
        assert_eq!(Kind::of(&Value::Bool(true)), Kind::Bool);
        assert_eq!(Kind::of(&Value::Text("x".into())), Kind::Text);
    }
}
