//! The bridge to the upstream (cloud) broker: routes, the outbox drain, the downlink.
//!
//! - Out: device readings are mapped by the routes and enter the outbox on their way to
//!   the local broker (the publisher calls [`Bridge::outbound`]); messages that *other*
//!   local clients publish under an out route are picked up by a local subscription
//!   and enter the outbox too. Topics the gateway publishes itself are not picked up
//!   again, and neither is a message the bridge just brought down (a `both` route
//!   must not echo).
//! - The session ([`session`]) drains the outbox upstream and delivers `in` messages.
//!
//! # Layout
//! - [`routes`]: mosquitto-style topic lines.
//! - [`session`]: the rumqttc connection, reconnects, the drain, Last Will and status.
//! - [`tls`]: rustls client configuration.

pub mod client;
pub mod routes;
pub mod session;
pub mod tls;

use std::collections::{HashSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::broker::{BrokerError, BrokerHandle, Message};
use crate::buffer::{NewMessage, Outbox};
use crate::config::{Gateway, UpstreamConfig};
use routes::Routes;
use session::{Endpoint, Session};

#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error("upstream.url: {0}")]
    Url(String),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("upstream.password_file {path}: {source}")]
    Password {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

/// Messages the bridge just delivered locally, so that an out route does not send them
/// straight back up.
#[derive(Default)]
pub struct Echoes {
    recent: Mutex<VecDeque<u64>>,
}

/// How many downlink messages are remembered for echo suppression.
const ECHO_MEMORY: usize = 1024;

fn fingerprint(topic: &str, payload: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    topic.hash(&mut h);
    payload.hash(&mut h);
    h.finish()
}

impl Echoes {
    pub fn remember(&self, topic: &str, payload: &[u8]) {
        if let Ok(mut r) = self.recent.lock() {
            if r.len() >= ECHO_MEMORY {
                r.pop_front();
            }
            r.push_back(fingerprint(topic, payload));
        }
    }

    /// True (once) when this message was just brought down by the bridge.
    pub fn take(&self, topic: &str, payload: &[u8]) -> bool {
        let f = fingerprint(topic, payload);
        match self.recent.lock() {
            Ok(mut r) => match r.iter().position(|x| *x == f) {
                Some(i) => {
                    r.remove(i);
                    true
                }
                None => false,
            },
            Err(_) => false,
        }
    }
}

/// What the session and the local pick-up share.
pub struct Shared {
    pub routes: Routes,
    pub outbox: Outbox,
    pub broker: BrokerHandle,
    pub echoes: Echoes,
}

/// Topics the gateway publishes itself (readings, availability, status): they reach the
/// outbox through the publisher, never through the local pick-up.
#[derive(Debug, Clone)]
pub struct Owned {
    pub prefix: String,
    pub devices: HashSet<String>,
}

impl Owned {
    pub fn contains(&self, topic: &str) -> bool {
        let Some(rest) = topic
            .strip_prefix(self.prefix.as_str())
            .and_then(|r| r.strip_prefix('/'))
        else {
            return false;
        };
        if rest == "status" {
            return true;
        }
        match rest.split_once('/') {
            Some((device, tail)) => self.devices.contains(device) && !tail.ends_with("/set"),
            None => false,
        }
    }
}

/// The running bridge.
pub struct Bridge {
    shared: Arc<Shared>,
    stop: CancellationToken,
    session: JoinHandle<()>,
    pickup: Option<JoinHandle<()>>,
}

impl Bridge {
    /// The local filters the bridge subscribes to; name them to `broker::start`.
    pub fn local_filters(cfg: &UpstreamConfig) -> Vec<String> {
        Routes::new(cfg.route.clone()).local_filters()
    }

    pub fn start(
        cfg: &UpstreamConfig,
        gateway: &Gateway,
        outbox: Outbox,
        broker: BrokerHandle,
        owned: Owned,
    ) -> Result<Bridge, BridgeError> {
        let (host, port, use_tls) = session::parse_url(&cfg.url).map_err(BridgeError::Url)?;
        let tls = if use_tls {
            Some(tls::client_config(
                &cfg.ca_file,
                &cfg.cert_file,
                &cfg.key_file,
            )?)
        } else {
            None
        };
        let credentials = if cfg.username.is_empty() {
            None
        } else {
            let password = if cfg.password_file.is_empty() {
                String::new()
            } else {
                std::fs::read_to_string(&cfg.password_file)
                    .map_err(|source| BridgeError::Password {
                        path: cfg.password_file.clone(),
                        source,
                    })?
                    .trim_end_matches(['\n', '\r'])
                    .to_string()
            };
            Some((cfg.username.clone(), password))
        };
        let routes = Routes::new(cfg.route.clone());
        let status_topic = routes.status_topic(&format!("{}/status", gateway.topic_prefix));
        let local_filters = routes.local_filters();
        let shared = Arc::new(Shared {
            routes,
            outbox,
            broker,
            echoes: Echoes::default(),
        });
        let stop = CancellationToken::new();
        let pickup = if local_filters.is_empty() {
            None
        } else {
            let rx = shared.broker.subscribe_reliable(&local_filters)?;
            Some(tokio::spawn(pick_up(shared.clone(), owned, rx)))
        };
        let s = Session {
            shared: shared.clone(),
            endpoint: Endpoint { host, port, tls },
            client_id: cfg
                .client_id
                .clone()
                .unwrap_or_else(|| format!("sensorgate-{}", gateway.id)),
            credentials,
            keepalive: cfg.keepalive,
            v5: cfg.protocol == crate::config::Protocol::V5,
            status_topic,
            drain_rate: cfg.drain_rate,
            stop: stop.clone(),
        };
        let session = tokio::spawn(s.run());
        Ok(Bridge {
            shared,
            stop,
            session,
            pickup,
        })
    }

    /// The outbox entries for messages the gateway publishes itself (routes applied;
    /// messages no out route takes are left out).
    pub fn outbound(&self, messages: &[Message]) -> Vec<NewMessage> {
        outbound(&self.shared.routes, messages)
    }

    /// What the publisher needs to put its messages into the outbox.
    pub fn uplink(&self) -> Uplink {
        Uplink(self.shared.clone())
    }

    /// Stop: in-flight messages get a short deadline for their PUBACK, `offline` goes
    /// upstream, the connection closes; the outbox keeps the rest for the next start.
    pub async fn stop(self) {
        if let Some(p) = self.pickup {
            p.abort();
        }
        self.stop.cancel();
        let _ = self.session.await;
        self.shared.outbox.close().await;
    }
}

/// The publisher's way into the outbox.
#[derive(Clone)]
pub struct Uplink(Arc<Shared>);

impl Uplink {
    /// Put the messages the routes send upstream into the outbox; returns once they are
    /// committed. Returns how many were stored.
    pub async fn store(&self, messages: &[Message]) -> Result<usize, crate::buffer::BufferError> {
        let batch = outbound(&self.0.routes, messages);
        if batch.is_empty() {
            return Ok(0);
        }
        self.0.outbox.append(batch).await.map(|a| a.stored)
    }
}

pub fn outbound(routes: &Routes, messages: &[Message]) -> Vec<NewMessage> {
    messages
        .iter()
        .filter_map(|m| {
            routes.outbound(&m.topic).map(|(topic, qos)| NewMessage {
                topic,
                payload: m.payload.to_vec(),
                qos,
                retain: m.retain,
            })
        })
        .collect()
}

/// Messages other local clients publish under an out route: into the outbox.
/// Whatever has arrived meanwhile goes into one append (one transaction), up to this
/// many messages.
const PICK_UP_BATCH: usize = 256;

async fn pick_up(shared: Arc<Shared>, owned: Owned, mut rx: tokio::sync::mpsc::Receiver<Message>) {
    let mut got = Vec::with_capacity(PICK_UP_BATCH);
    while rx.recv_many(&mut got, PICK_UP_BATCH).await > 0 {
        got.retain(|m| !(owned.contains(&m.topic) || shared.echoes.take(&m.topic, &m.payload)));
        let batch = outbound(&shared.routes, &got);
        if !batch.is_empty() {
            if let Err(e) = shared.outbox.append(batch).await {
                log::error!(
                    "bridge: {} message(s) from local clients are lost: {e}",
                    got.len()
                );
            }
        }
        got.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owned_topics() {
        let o = Owned {
            prefix: "sg".into(),
            devices: ["boiler".to_string()].into_iter().collect(),
        };
        assert!(o.contains("sg/status"));
        assert!(o.contains("sg/boiler/temp"));
        assert!(o.contains("sg/boiler/availability"));
        assert!(!o.contains("sg/boiler/temp/set"), "commands are not ours");
        assert!(!o.contains("sg/esp32/temp"), "another client's device");
        assert!(!o.contains("other/boiler/temp"));
    }

    #[test]
    fn echoes_are_taken_once() {
        let e = Echoes::default();
        e.remember("a/b", b"1");
        assert!(!e.take("a/b", b"2"));
        assert!(e.take("a/b", b"1"));
        assert!(!e.take("a/b", b"1"));
    }
}
