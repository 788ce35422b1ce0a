//! Home Assistant discovery end to end: the real daemon, a real MQTT subscriber on the
//! discovery prefix, the documented device-based discovery schema.

mod common;

use std::time::Duration;

use common::*;
use rumqttc::QoS;
use serde_json::Value as Json;

const T: Duration = Duration::from_secs(10);

fn config(disc: &str, devices: &[&str]) -> String {
    let mut c = format!("[homeassistant]\nenabled = true\ndiscovery_prefix = \"{disc}\"\n");
    for d in devices {
        c.push_str(&format!(
            r#"
[[device]]
name = "{d}"
plugin = "sim"
poll_interval = "200ms"

[[device.point]]
name = "temp"
signal = "sine"
min = 18.0
max = 24.0
unit = "°C"
device_class = "temperature"
state_class = "measurement"

[[device.point]]
name = "flag"
signal = "constant"
value = true

[[device.point]]
name = "label"
signal = "constant"
value = "hello"
"#
        ));
    }
    c
}

fn json(m: &Msg) -> Json {
    serde_json::from_str(&m.payload).unwrap_or_else(|e| panic!("{}: {e}: {}", m.topic, m.payload))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_is_announced_with_the_documented_schema() {
    let disc = format!("ha{}", free_port());
    let s = Setup::new(&config(&disc, &["boiler"]));
    let mut d = s.start();
    let p = s.prefix.clone();
    // Subscribe late: the config messages must be retained.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let sub = Sub::connect(s.addr(), "ha", &format!("{disc}/#")).await;
    let states = Sub::connect(s.addr(), "states", &format!("{p}/#")).await;

    let topic = format!("{disc}/device/sensorgate_test_boiler/config");
    let m = sub
        .wait_for(T, |m| m.topic == topic)
        .await
        .expect("device config");
    assert!(m.retain, "a retained config");
    let c = json(&m);
    assert_eq!(c["dev"]["ids"][0], "sensorgate_test_boiler");
    assert_eq!(c["dev"]["name"], "boiler");
    assert_eq!(c["dev"]["via_device"], "sensorgate_test");
    assert_eq!(c["o"]["name"], "sensorgate");
    assert_eq!(c["qos"], 1);
    let avail: Vec<&str> = c["availability"]
        .as_array()
        .expect("availability list")
        .iter()
        .filter_map(|a| a["topic"].as_str())
        .collect();
    assert_eq!(
        avail,
        [format!("{p}/boiler/availability"), format!("{p}/status")]
    );
    assert_eq!(c["availability_mode"], "all");
    assert_eq!(c["payload_available"], "online");
    assert_eq!(c["payload_not_available"], "offline");

    let cmps = c["cmps"].as_object().expect("cmps");
    assert_eq!(cmps.len(), 3, "{cmps:?}");
    let temp = &cmps["temp"];
    assert_eq!(temp["p"], "sensor");
    assert_eq!(temp["unique_id"], "sensorgate_test_boiler_temp");
    assert_eq!(temp["state_topic"], format!("{p}/boiler/temp"));
    assert_eq!(temp["value_template"], "{{ value_json.value }}");
    assert_eq!(temp["unit_of_measurement"], "°C");
    assert_eq!(temp["device_class"], "temperature");
    assert_eq!(temp["state_class"], "measurement");
    let flag = &cmps["flag"];
    assert_eq!(flag["p"], "binary_sensor");
    assert_eq!(
        flag["value_template"],
        "{{ 'ON' if value_json.value else 'OFF' }}"
    );
    let label = &cmps["label"];
    assert_eq!(label["p"], "sensor");
    assert!(label.get("unit_of_measurement").is_none());
    assert!(label.get("state_class").is_none());
    let mut ids: Vec<&str> = cmps
        .values()
        .filter_map(|c| c["unique_id"].as_str())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 3, "unique ids are unique");

    // Every state topic carries what its template reads: value_json.value.
    for (name, cmp) in cmps {
        let st = cmp["state_topic"]
            .as_str()
            .expect("state_topic")
            .to_string();
        let m = states
            .wait_for(T, |m| m.topic == st)
            .await
            .unwrap_or_else(|| panic!("no state on {st}"));
        let v = &json(&m)["value"];
        match cmp["p"].as_str() {
            Some("binary_sensor") => assert!(v.is_boolean(), "{name}: {v}"),
            _ if name == "label" => assert!(v.is_string(), "{name}: {v}"),
            _ => assert!(v.is_number(), "{name}: {v}"),
        }
    }

    // The gateway is the device every device comes via.
    let gw_topic = format!("{disc}/device/sensorgate_test/config");
    let g = sub
        .wait_for(T, |m| m.topic == gw_topic)
        .await
        .expect("gateway config");
    let g = json(&g);
    assert_eq!(g["dev"]["ids"][0], "sensorgate_test");
    assert_eq!(g["cmps"]["status"]["p"], "binary_sensor");
    assert_eq!(g["cmps"]["status"]["state_topic"], format!("{p}/status"));
    assert_eq!(g["cmps"]["status"]["device_class"], "connectivity");

    d.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ha_birth_resends_and_a_removed_device_is_deleted() {
    let disc = format!("ha{}", free_port());
    let s = Setup::new(&config(&disc, &["keep", "old"]));
    let mut d = s.start();
    let sub = Sub::connect(s.addr(), "ha", &format!("{disc}/#")).await;
    let keep = format!("{disc}/device/sensorgate_test_keep/config");
    let old = format!("{disc}/device/sensorgate_test_old/config");
    sub.wait_for(T, |m| m.topic == keep).await.expect("keep");
    sub.wait_for(T, |m| m.topic == old).await.expect("old");

    // HA's birth message: everything again.
    let seen = sub.messages().len();
    sub.client
        .publish(format!("{disc}/status"), QoS::AtLeastOnce, false, "online")
        .await
        .expect("publish birth");
    sub.wait_for_after(seen, T, |m| m.topic == keep)
        .await
        .expect("keep sent again after the birth message");
    drop(sub);
    assert_eq!(d.stop().code(), Some(0));

    // `old` leaves the config.
    s.write(&config(&disc, &["keep"]));
    let mut d = s.start();
    let sub = Sub::connect(s.addr(), "ha2", &format!("{disc}/#")).await;
    sub.client
        .publish(format!("{disc}/status"), QoS::AtLeastOnce, false, "online")
        .await
        .expect("publish birth");
    let gone = sub
        .wait_for(T, |m| m.topic == old)
        .await
        .expect("a removal for the device that left");
    assert_eq!(gone.payload, "", "an empty config removes the device");
    let remembered = std::fs::read_to_string(s.state_dir().join("homeassistant.json"))
        .expect("homeassistant.json");
    assert!(remembered.contains("sensorgate_test_old"), "{remembered}");
    d.stop();
}
