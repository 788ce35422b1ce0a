//! Readings to MQTT: `<prefix>/<device>/<point>` with the contract's JSON payload,
//! retained; availability and gateway status topics.

use std::collections::BTreeSet;
use std::sync::Arc;

use sensorgate_api::{format_ts, DeviceEvent, Quality, Reading, Value};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::bridge::Uplink;
use crate::broker::{BrokerError, BrokerHandle, Message};
use crate::homeassistant::Discovery;

/// `online` / `offline`, the payloads of availability and status topics.
pub fn availability(online: bool) -> &'static str {
    if online {
        "online"
    } else {
        "offline"
    }
}

/// The topics of one gateway, from its `topic_prefix`.
#[derive(Debug, Clone)]
pub struct Topics {
    prefix: Arc<str>,
}

impl Topics {
    pub fn new(prefix: &str) -> Topics {
        Topics {
            prefix: prefix.into(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `<prefix>/<device>/<point>`
    pub fn point(&self, device: &str, point: &str) -> String {
        format!("{}/{device}/{point}", self.prefix)
    }

    /// `<prefix>/<device>/availability`
    pub fn availability(&self, device: &str) -> String {
        format!("{}/{device}/availability", self.prefix)
    }

    /// `<prefix>/status`: the gateway's own online/offline.
    pub fn status(&self) -> String {
        format!("{}/status", self.prefix)
    }

    /// `<prefix>/+/+/set`: the filter of write commands.
    pub fn set_filter(&self) -> String {
        format!("{}/+/+/set", self.prefix)
    }

    /// `(device, point)` of a `<prefix>/<device>/<point>/set` topic.
    pub fn parse_set<'t>(&self, topic: &'t str) -> Option<(&'t str, &'t str)> {
        let rest = topic.strip_prefix(&*self.prefix)?.strip_prefix('/')?;
        let rest = rest.strip_suffix("/set")?;
        let (device, point) = rest.split_once('/')?;
        (!point.contains('/')).then_some((device, point))
    }
}

#[derive(Serialize)]
struct Payload<'a> {
    value: &'a Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    unit: Option<&'a str>,
    ts: String,
}

/// The JSON payload of a reading: `{"value": 21.5, "unit": "°C", "ts": "…Z"}`.
pub fn payload(r: &Reading) -> Vec<u8> {
    payload_with_ts(r, format_ts(r.ts))
}

/// [`payload`] with the reading's `ts` already formatted.
fn payload_with_ts(r: &Reading, ts: String) -> Vec<u8> {
    let p = Payload {
        value: &r.value,
        unit: r.unit.as_deref(),
        ts,
    };
    // Serializing plain data to a Vec cannot fail; an empty payload would be visible.
    serde_json::to_vec(&p).unwrap_or_default()
}

/// Counts of what the publisher did, for logs and status.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub published: u64,
    /// Bad-quality or non-finite readings that were not published as values.
    pub skipped: u64,
    /// Readings on a point name the daemon keeps for itself (`availability`).
    pub reserved: u64,
    /// Devices that said they were online at some point.
    pub devices_seen: BTreeSet<Arc<str>>,
}

/// Turn readings into messages; bad ones are skipped (and counted).
fn messages(topics: &Topics, readings: &[Reading], stats: &mut Stats) -> Vec<Message> {
    let mut out = Vec::with_capacity(readings.len());
    // The readings of one poll share their time: format it once.
    let mut ts: Option<(std::time::SystemTime, String)> = None;
    for r in readings {
        if let Quality::Bad(why) = &r.quality {
            stats.skipped += 1;
            log::debug!(
                device = &*r.device, point = &*r.point;
                "device {} point {}: bad reading not published: {why}",
                r.device,
                r.point
            );
            continue;
        }
        if crate::config::RESERVED_POINTS.contains(&&*r.point) {
            // Plugins that learn point names from the device (serial, exec) could name
            // one after the device's own topic; it would overwrite the availability.
            stats.skipped += 1;
            stats.reserved += 1;
            if stats.reserved.is_power_of_two() {
                log::warn!(
                    "device {}: a reading named {:?} is not published: \
                     <prefix>/<device>/{} is the device's own topic ({} so far)",
                    r.device,
                    r.point,
                    r.point,
                    stats.reserved
                );
            }
            continue;
        }
        if !r.value.is_publishable() {
            stats.skipped += 1;
            log::debug!(
                device = &*r.device, point = &*r.point;
                "device {} point {}: {} is not a publishable value",
                r.device,
                r.point,
                r.value
            );
            continue;
        }
        let text = match &ts {
            Some((t, text)) if *t == r.ts => text.clone(),
            _ => {
                let text = format_ts(r.ts);
                ts = Some((r.ts, text.clone()));
                text
            }
        };
        out.push(Message::new(
            topics.point(&r.device, &r.point),
            payload_with_ts(r, text),
            true,
        ));
    }
    out
}

/// Hand messages bound upstream to the outbox (committed before anything is published
/// locally, so that a reading seen anywhere is never missing upstream).
async fn store_upstream(uplink: Option<&Uplink>, batch: &[Message]) {
    if let Some(u) = uplink {
        if let Err(e) = u.store(batch).await {
            log::error!(
                "{} message(s) bound upstream are lost: the buffer failed: {e}",
                batch.len()
            );
        }
    }
}

/// Home Assistant discovery as the publisher runs it.
pub struct HomeAssistant {
    pub discovery: Discovery,
    /// Messages on `<discovery_prefix>/status`.
    pub births: mpsc::Receiver<Message>,
    births_closed: bool,
}

impl HomeAssistant {
    pub fn new(discovery: Discovery, births: mpsc::Receiver<Message>) -> HomeAssistant {
        HomeAssistant {
            discovery,
            births,
            births_closed: false,
        }
    }
}

/// Events taken into one store-and-publish round at most.
const MAX_EVENTS_PER_ROUND: usize = 256;

/// Publish every event until all adapters have dropped their senders.
///
/// Every event already waiting joins the current round, in order: readings of many
/// devices then share one outbox transaction and one hand-over to the broker.
///
/// With Home Assistant discovery on, a device's config message goes out with its first
/// good readings (ahead of them), and everything announced goes out again whenever HA's
/// birth message (`online` on `<discovery_prefix>/status`) comes through `ha.births`.
pub async fn run(
    topics: Topics,
    broker: BrokerHandle,
    uplink: Option<Uplink>,
    mut events: mpsc::Receiver<DeviceEvent>,
    mut ha: Option<HomeAssistant>,
) -> Result<Stats, BrokerError> {
    let mut stats = Stats::default();
    let mut round = Vec::new();
    if let Some(ha) = &mut ha {
        broker.publish(ha.discovery.start()).await?;
    }
    loop {
        let first = match &mut ha {
            Some(h) if !h.births_closed => tokio::select! {
                e = events.recv() => e,
                birth = h.births.recv() => {
                    match birth {
                        Some(m) if m.payload.as_ref() == b"online" => {
                            log::info!("Home Assistant is online: sending discovery again");
                            broker.publish(h.discovery.rebirth()).await?;
                        }
                        Some(_) => {}
                        None => h.births_closed = true,
                    }
                    continue;
                }
            },
            _ => events.recv().await,
        };
        let Some(first) = first else { break };
        round.push(first);
        while round.len() < MAX_EVENTS_PER_ROUND {
            match events.try_recv() {
                Ok(e) => round.push(e),
                Err(_) => break,
            }
        }
        let mut batch = Vec::new();
        let mut acks = Vec::new();
        for event in round.drain(..) {
            match event {
                DeviceEvent::Readings { readings, ack } => {
                    if let Some(h) = &mut ha {
                        batch.extend(h.discovery.observe(&readings));
                    }
                    let m = messages(&topics, &readings, &mut stats);
                    stats.published += m.len() as u64;
                    batch.extend(m);
                    acks.extend(ack);
                }
                DeviceEvent::Availability { device, online } => {
                    if online {
                        log::info!(device = &*device; "device {device} online");
                        stats.devices_seen.insert(device.clone());
                    } else {
                        log::info!(device = &*device; "device {device} offline");
                    }
                    batch.push(Message::new(
                        topics.availability(&device),
                        availability(online),
                        true,
                    ));
                }
            }
        }
        if !batch.is_empty() {
            store_upstream(uplink.as_ref(), &batch).await;
            broker.publish(batch).await?;
        }
        for ack in acks {
            let _ = ack.send(());
        }
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn reading(value: Value, unit: Option<&str>) -> Reading {
        Reading::new("boiler".into(), "flow".into(), value)
            .with_unit(unit.map(Arc::from))
            .with_ts(UNIX_EPOCH + Duration::from_millis(1_795_315_563_123))
    }

    #[test]
    fn payload_is_the_contract() {
        let p = payload(&reading(Value::Float(21.5), Some("°C")));
        assert_eq!(
            String::from_utf8(p).unwrap(),
            r#"{"value":21.5,"unit":"°C","ts":"2026-11-22T02:46:03.123Z"}"#
        );
        let p = payload(&reading(Value::Bool(true), None));
        assert_eq!(
            String::from_utf8(p).unwrap(),
            r#"{"value":true,"ts":"2026-11-22T02:46:03.123Z"}"#
        );
    }

    #[test]
    fn topics() {
        let t = Topics::new("sensorgate");
        assert_eq!(t.point("boiler", "flow"), "sensorgate/boiler/flow");
        assert_eq!(t.availability("boiler"), "sensorgate/boiler/availability");
        assert_eq!(t.status(), "sensorgate/status");
        assert_eq!(
            t.parse_set("sensorgate/boiler/flow/set"),
            Some(("boiler", "flow"))
        );
        assert_eq!(t.parse_set("sensorgate/boiler/flow"), None);
        assert_eq!(t.parse_set("other/boiler/flow/set"), None);
    }

    #[test]
    fn bad_readings_are_skipped_and_counted() {
        let t = Topics::new("p");
        let mut stats = Stats::default();
        let rs = vec![
            reading(Value::Float(1.0), None),
            reading(Value::Float(f64::NAN), None),
            reading(Value::Int(85), None).with_quality(Quality::Bad("power-on value".into())),
        ];
        let m = messages(&t, &rs, &mut stats);
        assert_eq!(m.len(), 1);
        assert!(m[0].retain);
        assert_eq!(stats.skipped, 2);

        // A point named after the device's own topic would overwrite it.
        let own = Reading::new("boiler".into(), "availability".into(), Value::Int(1));
        assert!(messages(&t, &[own], &mut stats).is_empty());
        assert_eq!(stats.skipped, 3);
    }
}
