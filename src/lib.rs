//! sensorgate: an IoT edge gateway daemon. It hosts an MQTT broker, polls devices
//! through plugins, and publishes every reading as JSON.
//!
//! # Layout
//! - [`app`]: wiring; start everything, run, the ordered shutdown.
//! - [`config`]: the TOML configuration, `conf.d/`, environment overrides, validation.
//! - [`bridge`]: routes, the upstream session, the outbox drain, the downlink.
//! - [`broker`]: the embedded rumqttd broker on its own threads; [`broker::BrokerHandle`].
//!   `broker::front` owns the listeners (auth, ACL, limits; `broker::packet` parses what it
//!   must, `broker::tls` terminates TLS); `broker::passwd` and `broker::acl` read
//!   mosquitto's files.
//! - [`buffer`]: the SQLite outbox for messages bound upstream.
//! - [`homeassistant`]: Home Assistant MQTT discovery.
//! - [`publish`]: readings to topics and JSON payloads; availability and status.
//! - [`plugins`]: the one list of device plugins built into this binary.
//! - [`topic`]: MQTT topic filter matching.
//! - [`tail`]: `sensorgate tail`, a subscriber that prints.
//! - [`pem`]: certificates and keys from PEM files, for both TLS ends.
//! - [`logging`]: journal or stderr, and rumqttd's tracing events forwarded to `log`.
//!
//! The plugin API (readings, the `Adapter` trait) is its own crate, `sensorgate-api`,
//! under `plugins/api`; each plugin is a crate under `plugins/`.

pub mod app;
pub mod bridge;
pub mod broker;
pub mod buffer;
pub mod config;
pub mod homeassistant;
pub mod logging;
pub mod pem;
pub mod plugins;
pub mod publish;
pub mod tail;
pub mod topic;
