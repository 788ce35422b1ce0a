//! The embedded MQTT broker (rumqttd 0.20) on its own threads, and the small
//! [`BrokerHandle`] through which the rest of the daemon publishes and subscribes.
//!
//! Nothing outside this module names rumqttd, so the broker can be replaced. What this
//! module works around (all verified on 0.20):
//! - `Broker::start()` blocks forever, has no stop, and its listeners cost two socket
//!   hops and three thread wake-ups per message: it is never called. `Broker::new()`
//!   starts the router thread, and every connection is a local link to it: the front's
//!   clients ([`local`]) and the daemon's own two (one to publish, one to subscribe).
//! - `LinkTx` calls are synchronous and block when the router's queue is full: they run
//!   on a dedicated thread, fed by a bounded channel, never on a tokio worker.
//! - A link that ignores `Notification::Unschedule` stalls after 200 messages: both link
//!   receivers answer it with `ready()`.
//! - `RouterConfig::default()` is all zeros: every field is set below, with small
//!   segments (memory is a goal on a Pi).
//!
//! The configured listeners belong to [`front`], which checks CONNECT / SUBSCRIBE /
//! PUBLISH (password file, ACL, limits, TLS) and passes the rest to the router. QoS 0
//! subscriptions, and QoS 1 ones of clean sessions, are routed by the front itself
//! ([`direct`]): a message reaches the router only when a filter of the router's matches
//! it (the daemon's own publishes go through the same table). Each
//! listener is bound once here first, for a clear start-up error, and the broker is
//! only called ready once it answers an MQTT CONNECT. The daemon's own links bypass the
//! front.

pub mod acl;
pub mod direct;
pub mod flow;
pub mod front;
pub mod local;
pub mod offline;
pub mod packet;
pub mod passwd;
pub mod retained;
pub mod tls;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::protocol::{Packet, Publish};
use rumqttd::{Notification, RouterConfig};
use tokio::sync::{mpsc, oneshot};

use self::acl::{Acl, AclError};
use self::flow::{Flow, Routes};
use self::front::{Front, Policy};
use self::passwd::{PasswdError, PasswordFile};
use self::retained::{Retained, RetainedStore};

use crate::config::BrokerConfig;
use crate::topic;

/// The router keeps this much of each subscribed filter's messages in memory
/// (`SEGMENT_SIZE × SEGMENT_COUNT`); a subscriber further behind than that would miss
/// messages, so the flow control ([`flow`]) holds publishers back at half of it.
/// rumqttd's sample config (100 MiB × 10) reached 305 MiB RSS under load; 1 MiB × 2
/// peaked at 25–39 MiB in the flat-out benchmarks, 512 KiB × 2 at 16–25 MiB with the
/// same throughput and no loss.
const SEGMENT_SIZE: usize = 512 * 1024;
const SEGMENT_COUNT: usize = 2;
/// What rumqttd reads for one QoS 0 subscription at a time. Before the flow control a
/// flat-out QoS 0 subscriber lost messages with 200 that 2000 delivered; now nothing is
/// lost either way and 200 takes less memory per subscriber. (Retained messages are not
/// rumqttd's business any more: see [`retained`].)
const MAX_OUTGOING_PACKETS: u64 = 200;
/// The retained messages, in the state directory.
const RETAINED_FILE: &str = "retained.bin";
/// In-process links count against rumqttd's connection limit.
const INTERNAL_LINKS: usize = 2;
/// rumqttd's own connection limit, above the front's (which is the one clients meet):
/// connections the front has closed may still be counted there for a moment.
const INTERNAL_SPARE_CONNECTIONS: usize = 64;
/// Messages waiting for the publishing thread; a full queue makes publishers wait.
const COMMAND_QUEUE: usize = 1024;
/// Messages waiting for one in-process subscriber before they are dropped (counted).
const SUBSCRIBER_QUEUE: usize = 1024;

/// A message to or from the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub topic: String,
    pub payload: Bytes,
    pub retain: bool,
}

impl Message {
    pub fn new(topic: impl Into<String>, payload: impl Into<Bytes>, retain: bool) -> Message {
        Message {
            topic: topic.into(),
            payload: payload.into(),
            retain,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("cannot listen on {addr} (broker.{key}): {source}")]
    Listen {
        addr: SocketAddr,
        key: &'static str,
        source: std::io::Error,
    },
    #[error("the embedded broker refused an internal link: {0}")]
    Link(String),
    #[error("the embedded broker did not answer on {addr} within {secs} s")]
    NotReady { addr: SocketAddr, secs: u64 },
    #[error("the embedded broker has stopped")]
    Gone,
    #[error("internal subscription {0:?} was not planned at start")]
    NotPlanned(String),
    #[error("cannot start a broker thread: {0}")]
    Thread(#[from] std::io::Error),
    #[error("broker.password_file {0}")]
    Passwords(#[from] PasswdError),
    #[error("broker.acl_file {0}")]
    Acl(#[from] AclError),
    #[error("{0}")]
    Tls(#[from] tls::TlsError),
}

enum Command {
    Publish(Vec<Message>, Option<oneshot::Sender<()>>),
    Subscribe(String),
}

/// In-process subscribers: filters, where their messages go, and whether they must not
/// lose any (they then slow publishers down instead, see [`flow`]).
type Subscribers = Arc<Mutex<Vec<(Vec<String>, mpsc::Sender<Message>, bool)>>>;

/// The daemon's way into the broker: cheap to clone.
#[derive(Clone)]
pub struct BrokerHandle {
    commands: mpsc::Sender<Command>,
    subscribers: Subscribers,
    /// What the subscribing link subscribed to at start (see [`topic::plan`]).
    link_filters: Arc<Vec<String>>,
    /// Where local clients connect (MQTT 3.1.1).
    pub addr: SocketAddr,
    flow: Arc<Flow>,
    /// The in-process subscribing link, for flow control.
    lag: Arc<flow::Lag>,
    retained: Arc<RetainedStore>,
    retained_file: Arc<PathBuf>,
}

impl BrokerHandle {
    /// Write the retained messages to the state directory (at a clean stop).
    pub async fn save_retained(&self) {
        let (store, path) = (self.retained.clone(), self.retained_file.clone());
        let saved = tokio::task::spawn_blocking(move || store.save(&path)).await;
        match saved {
            Ok(Ok(Some(n))) => log::debug!("{n} retained message(s) saved"),
            Ok(Ok(None)) => {}
            Ok(Err(e)) => log::error!("retained messages not saved: {e}"),
            Err(e) => log::error!("retained messages not saved: {e}"),
        }
    }

    /// Publish `messages` in order; returns once the broker's router has them.
    pub async fn publish(&self, messages: Vec<Message>) -> Result<(), BrokerError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Publish(messages, Some(tx)))
            .await
            .map_err(|_| BrokerError::Gone)?;
        rx.await.map_err(|_| BrokerError::Gone)
    }

    /// Receive, once each, the messages published on topics matching any of `filters`
    /// (QoS 0). Every filter must have been named to [`start`]. A subscriber that falls
    /// more than a queue behind loses messages (logged).
    pub fn subscribe(&self, filters: &[String]) -> Result<mpsc::Receiver<Message>, BrokerError> {
        self.add_subscriber(filters, false)
    }

    /// Like [`subscribe`](Self::subscribe), for a subscriber that must lose nothing (the
    /// bridge's uplink): when it falls behind, the broker waits for it and publishers
    /// are slowed down by the flow control, as for a QoS 1 subscriber.
    pub fn subscribe_reliable(
        &self,
        filters: &[String],
    ) -> Result<mpsc::Receiver<Message>, BrokerError> {
        let rx = self.add_subscriber(filters, true)?;
        for f in filters {
            self.flow.set_filter(&self.lag, f, true);
        }
        Ok(rx)
    }

    fn add_subscriber(
        &self,
        filters: &[String],
        reliable: bool,
    ) -> Result<mpsc::Receiver<Message>, BrokerError> {
        if let Some(f) = filters
            .iter()
            .find(|f| !self.link_filters.iter().any(|l| topic::covers(l, f)))
        {
            return Err(BrokerError::NotPlanned(f.clone()));
        }
        let (tx, rx) = mpsc::channel(SUBSCRIBER_QUEUE);
        self.subscribers
            .lock()
            .map_err(|_| BrokerError::Gone)?
            .push((filters.to_vec(), tx, reliable));
        Ok(rx)
    }
}

/// The address a local client should connect to for a listener address (an unspecified
/// address such as 0.0.0.0 is reached through loopback).
pub fn client_addr(listen: SocketAddr) -> SocketAddr {
    match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), listen.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), listen.port())
        }
        _ => listen,
    }
}

/// rumqttd's router for `max_connections` clients.
fn router_config(max_connections: usize) -> RouterConfig {
    RouterConfig {
        // Clients, and as many offline sessions (each keeps its link).
        max_connections: 2 * max_connections + INTERNAL_LINKS + INTERNAL_SPARE_CONNECTIONS,
        max_outgoing_packet_count: MAX_OUTGOING_PACKETS,
        max_segment_size: SEGMENT_SIZE,
        max_segment_count: SEGMENT_COUNT,
        custom_segment: None,
        initialized_filters: None,
        shared_subscriptions_strategy: Default::default(),
    }
}

/// The front's listeners: `listen`, `listen_v5`, `listen_tls`.
async fn bind_listeners(
    cfg: &BrokerConfig,
) -> Result<
    (
        tokio::net::TcpListener,
        Option<tokio::net::TcpListener>,
        Option<tokio::net::TcpListener>,
    ),
    BrokerError,
> {
    let listen = cfg.listen_addr().ok_or(BrokerError::Gone)?;
    let v4 = bind(listen, "listen").await?;
    let v5 = match cfg.listen_v5_addr() {
        Some(a) => Some(bind(a, "listen_v5").await?),
        None => None,
    };
    let tls = match cfg.listen_tls_addr() {
        Some(a) => Some(bind(a, "listen_tls").await?),
        None => None,
    };
    Ok((v4, v5, tls))
}

/// Bind a listener of the front: "address in use" is a start-up error.
async fn bind(addr: SocketAddr, key: &'static str) -> Result<tokio::net::TcpListener, BrokerError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| BrokerError::Listen { addr, key, source })
}

/// What the front enforces, with the password and ACL files read.
fn policy(
    cfg: &BrokerConfig,
    router: local::Router,
    retained: Arc<RetainedStore>,
    flow: Arc<Flow>,
) -> Result<Policy, BrokerError> {
    let passwords = if cfg.password_file.is_empty() {
        None
    } else {
        Some(PasswordFile::load(std::path::Path::new(
            &cfg.password_file,
        ))?)
    };
    let acl = if cfg.acl_file.is_empty() {
        None
    } else {
        Some(Arc::new(Acl::load(std::path::Path::new(&cfg.acl_file))?))
    };
    let direct = Arc::new(direct::Table::new(acl.clone(), flow.clone()));
    Ok(Policy {
        passwords,
        acl,
        allow_anonymous: cfg.anonymous_allowed(),
        max_connections: cfg.max_connections,
        max_subscriptions: cfg.max_subscriptions_per_client,
        max_keepalive: u16::try_from(cfg.max_keepalive.as_secs()).unwrap_or(u16::MAX),
        max_payload: usize::try_from(cfg.max_payload_size).unwrap_or(usize::MAX),
        max_inflight: cfg.max_inflight,
        max_queued: cfg.max_queued_messages,
        message_expiry: cfg.message_expiry,
        retained,
        flow,
        router,
        direct,
    })
}

/// Start the broker from `[broker]` and return once it accepts MQTT connections.
///
/// `internal` names every filter the daemon will [`subscribe`](BrokerHandle::subscribe)
/// to. rumqttd forwards a message once per matching filter of a link and does not say
/// which, so the link subscribes to a plan in which each topic matches one filter, and
/// the handle sorts messages to subscribers itself.
pub async fn start(
    cfg: &BrokerConfig,
    internal: &[String],
    state_dir: &Path,
) -> Result<BrokerHandle, BrokerError> {
    let listen = cfg.listen_addr().ok_or(BrokerError::Gone)?;
    let listen_v5 = cfg.listen_v5_addr();
    let acceptor = match cfg.listen_tls_addr() {
        Some(_) => Some(tokio_rustls::TlsAcceptor::from(tls::server_config(cfg)?)),
        None => None,
    };
    // Bound now for a clear "address in use" at start, and let go again: a listener that
    // is bound but not yet served queues connections, and a client that tried every few
    // milliseconds meanwhile would come out of the queue as a burst of connects and use
    // up its connect-rate tokens. They are bound for good once the router and the
    // daemon's own links are set up.
    drop(bind_listeners(cfg).await?);
    // A subscriber may get half a log behind before publishers wait for it.
    let flow = Arc::new(Flow::new((SEGMENT_SIZE / 2) as u64));
    let retained_file = Arc::new(state_dir.join(RETAINED_FILE));
    let retained = Arc::new(match RetainedStore::load(&retained_file) {
        Ok(store) => {
            if !store.is_empty() {
                log::info!("{} retained message(s) read back", store.len());
            }
            store
        }
        Err(e) => {
            log::error!("retained messages of the last run are lost: {e}");
            RetainedStore::default()
        }
    });
    let router = router_config(cfg.max_connections);
    // Only the router: no listener of rumqttd's (`start()` is never called), every
    // client comes through the front on a local link.
    let config = rumqttd::Config {
        id: 0,
        router,
        ..Default::default()
    };
    let router = local::Router::new(rumqttd::Broker::new(config));
    let (pub_tx, pub_rx) = router
        .link("sensorgate-publisher")
        .map_err(|e| BrokerError::Link(e.to_string()))?;
    let (sub_tx, sub_rx) = router
        .link("sensorgate-subscriber")
        .map_err(|e| BrokerError::Link(e.to_string()))?;
    let policy = policy(cfg, router, retained.clone(), flow.clone())?;
    let table = policy.direct.clone();
    let front = Arc::new(Front::new(policy));

    let (commands, command_rx) = mpsc::channel(COMMAND_QUEUE);
    let subscribers: Subscribers = Arc::default();
    std::thread::Builder::new()
        .name("broker-pub".into())
        .spawn({
            let (retained, flow, table) = (retained.clone(), flow.clone(), table.clone());
            move || publish_thread(command_rx, pub_tx, sub_tx, retained, flow, table)
        })?;
    std::thread::Builder::new()
        .name("broker-drain".into())
        .spawn(move || receive_thread(pub_rx, None))?;
    let subs = subscribers.clone();
    let lag = flow.join();
    let (f, l) = (flow.clone(), lag.clone());
    std::thread::Builder::new()
        .name("broker-sub".into())
        .spawn(move || receive_thread(sub_rx, Some((subs, f, l))))?;

    let link_filters = topic::plan(internal);
    for f in &link_filters {
        // The daemon's own subscriptions are the router's.
        table.router_add(f);
        commands
            .send(Command::Subscribe(f.clone()))
            .await
            .map_err(|_| BrokerError::Gone)?;
    }

    // The front's listeners answer (any CONNACK will do: with a password file the
    // probe's anonymous CONNECT is refused, which is an answer too).
    let (listener, listener_v5, listener_tls) = bind_listeners(cfg).await?;
    tokio::spawn(front.clone().serve(listener, None));
    if let Some(l) = listener_v5 {
        tokio::spawn(front.clone().serve(l, None));
    }
    if let (Some(l), Some(acceptor)) = (listener_tls, acceptor) {
        tokio::spawn(front.clone().serve(l, Some(acceptor)));
    }
    let addr = client_addr(listen);
    wait_ready(addr, 4, Duration::from_secs(10)).await?;
    if let Some(a) = listen_v5 {
        wait_ready(client_addr(a), 5, Duration::from_secs(10)).await?;
    }
    let handle = BrokerHandle {
        commands,
        subscribers,
        link_filters: Arc::new(link_filters),
        addr,
        flow,
        lag,
        retained,
        retained_file,
    };
    let saver = handle.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(retained::AUTOSAVE);
        every.tick().await;
        loop {
            every.tick().await;
            saver.save_retained().await;
        }
    });
    Ok(handle)
}

/// Owns both `LinkTx`es: every call into the router happens on this thread.
fn publish_thread(
    mut rx: mpsc::Receiver<Command>,
    mut pub_tx: LinkTx,
    mut sub_tx: LinkTx,
    retained: Arc<RetainedStore>,
    flow: Arc<Flow>,
    table: Arc<direct::Table>,
) {
    // `LinkTx::send` is an `async fn` that never waits on anything but the router's
    // (blocking) queue, so a current-thread runtime on this thread is all it needs.
    let rt = match tokio::runtime::Builder::new_current_thread().build() {
        Ok(rt) => rt,
        Err(e) => {
            log::error!("broker publisher cannot start: {e}");
            return;
        }
    };
    rt.block_on(async move {
        let mut routes = Routes::default();
        let mut direct_routes = direct::Routes::default();
        while let Some(cmd) = rx.recv().await {
            match cmd {
                Command::Publish(messages, ack) => {
                    for m in messages {
                        if m.retain {
                            retained.set(
                                &m.topic,
                                Retained {
                                    qos: 0,
                                    properties: Box::default(),
                                    payload: m.payload.clone(),
                                },
                            );
                        }
                        if flow.active() {
                            flow.route(&mut routes, &m.topic, m.topic.len() + m.payload.len());
                        }
                        let message = direct::Message {
                            topic: &m.topic,
                            properties: &[],
                            payload: &m.payload,
                            qos: 0,
                        };
                        if !table.publish(&mut direct_routes, None, &message) {
                            continue;
                        }
                        let topic = Bytes::from(m.topic.into_bytes());
                        // Without the flag: the front hands out retained messages.
                        let publish = Publish::new(topic, m.payload, false);
                        if let Err(e) = pub_tx.send(Packet::Publish(publish, None)).await {
                            log::error!("embedded broker refused a message: {e}");
                            return;
                        }
                    }
                    if let Some(ack) = ack {
                        let _ = ack.send(());
                    }
                }
                Command::Subscribe(filter) => {
                    if let Err(e) = sub_tx.subscribe(filter.clone()) {
                        log::error!("embedded broker refused subscription {filter:?}: {e}");
                        return;
                    }
                }
            }
        }
    });
}

/// Reads a link's notifications; hands publishes to in-process subscribers (a reliable
/// one is waited for; the others lose what does not fit in their queue).
fn receive_thread(mut rx: LinkRx, subscribers: Option<(Subscribers, Arc<Flow>, Arc<flow::Lag>)>) {
    let mut dropped: u64 = 0;
    let mut to: Vec<(mpsc::Sender<Message>, bool)> = Vec::new();
    loop {
        match rx.recv() {
            Ok(Some(Notification::Forward(f))) => {
                let Some((subs, flow, lag)) = &subscribers else {
                    continue;
                };
                let Ok(topic) = std::str::from_utf8(&f.publish.topic) else {
                    continue;
                };
                to.clear();
                {
                    let Ok(list) = subs.lock() else { return };
                    to.extend(
                        list.iter()
                            .filter(|(filters, _, _)| {
                                filters.iter().any(|f| topic::matches(f, topic))
                            })
                            .map(|(_, tx, reliable)| (tx.clone(), *reliable)),
                    );
                }
                let mut counted = false;
                for (tx, reliable) in to.drain(..) {
                    let msg = Message::new(topic, f.publish.payload.clone(), f.publish.retain);
                    if reliable {
                        // Waits for room (the publishers wait meanwhile); fails only when
                        // the subscriber is gone.
                        let _ = tx.blocking_send(msg);
                        counted = true;
                    } else if tx.try_send(msg).is_err() && !tx.is_closed() {
                        dropped += 1;
                        if dropped.is_power_of_two() {
                            log::warn!(
                                "an internal subscriber to {topic:?} is behind: \
                                 {dropped} messages dropped so far"
                            );
                        }
                    }
                }
                if counted {
                    flow.delivered(lag, 1);
                }
            }
            Ok(Some(Notification::Unschedule)) => {
                if rx.ready().is_err() {
                    return;
                }
            }
            Ok(_) => {}
            Err(_) => return,
        }
    }
}

/// Wait until the broker answers an MQTT CONNECT of `level` on `addr` (accepted or
/// not).
async fn wait_ready(addr: SocketAddr, level: u8, limit: Duration) -> Result<(), BrokerError> {
    let deadline = Instant::now() + limit;
    loop {
        let ok = tokio::task::spawn_blocking(move || mqtt_connack(addr, level).is_some())
            .await
            .unwrap_or(false);
        if ok {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(BrokerError::NotReady {
                addr,
                secs: limit.as_secs(),
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One MQTT CONNECT / CONNACK / DISCONNECT exchange (protocol level 4 = 3.1.1 or
/// 5 = MQTT 5); true when the broker accepted it.
pub fn mqtt_ping(addr: SocketAddr, level: u8) -> bool {
    mqtt_connack(addr, level) == Some(0)
}

/// Like [`mqtt_ping`]: the CONNACK's return / reason code, None when there was none.
pub fn mqtt_connack(addr: SocketAddr, level: u8) -> Option<u8> {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return None;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
    // A new client id each time: rumqttd's v5 listener panics (and stays broken) when a
    // client id that connected before connects again after its connection ended.
    static PROBES: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = PROBES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let id = format!("sensorgate-probe-{}-{n}", std::process::id());
    // Protocol name, level, clean session, keepalive 10 s.
    let mut body = vec![0x00, 0x04, b'M', b'Q', b'T', b'T', level, 0x02, 0x00, 0x0a];
    if level == 5 {
        body.push(0x00); // no properties
    }
    body.extend_from_slice(&(id.len() as u16).to_be_bytes());
    body.extend_from_slice(id.as_bytes());
    let mut packet = vec![0x10, body.len() as u8];
    packet.extend_from_slice(&body);
    if s.write_all(&packet).is_err() {
        return None;
    }
    // CONNACK: type, remaining length (< 128 here), flags, return / reason code, …
    let mut head = [0u8; 2];
    if s.read_exact(&mut head).is_err() || head[0] != 0x20 || head[1] < 2 {
        return None;
    }
    let mut rest = vec![0u8; usize::from(head[1])];
    if s.read_exact(&mut rest).is_err() {
        return None;
    }
    let code = rest[1];
    let disconnect: &[u8] = if level == 5 {
        &[0xe0, 0x01, 0x00]
    } else {
        &[0xe0, 0x00]
    };
    let _ = s.write_all(disconnect);
    Some(code)
}
