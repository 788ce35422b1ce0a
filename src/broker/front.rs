//! The MQTT-aware front of the embedded broker: it owns the configured listeners and
//! connects each accepted client to rumqttd's router in process ([`super::local`]).
//!
//! Per client: read the CONNECT (with a timeout), decide (connect rate, max_connections,
//! password, keepalive), answer a refusal with its CONNACK code (rumqttd would just close
//! the socket), else open a link to the router: always a clean session, without a will,
//! under an id of the front's that is new for every connection, and pipe both ways.
//! Packets are passed on as the bytes they came in as; the front parses only
//! SUBSCRIBE / UNSUBSCRIBE (ACL, subscription limit, which route a filter takes),
//! PUBLISH (ACL, payload size, retained messages, flow control, its own routes) and what
//! it must answer for itself. The front enforces keepalive, and answers UNSUBSCRIBE.
//!
//! QoS 0 subscriptions, and QoS 1 subscriptions of clean sessions, never reach the
//! router: the front delivers to them from the publisher's task ([`super::direct`]),
//! acknowledges a QoS 1 PUBLISH itself when no filter of the router's matches it, and
//! numbers its QoS 1 deliveries above the router's (within the client's window).
//!
//! What rumqttd 0.20 does not do (or does wrong), the front does: session takeover and
//! persistent sessions with their offline queue ([`super::offline`]), retained messages
//! ([`super::retained`]), back-pressure for subscribers that fall behind ([`super::flow`]), the
//! delivery window (`max_inflight`, receive maximum) and wills.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_rustls::TlsAcceptor;

use super::acl::{Access, Acl, Client};
use super::direct::{self, Target};
use super::flow::{Flow, Lag, Routes};
use super::local::{self, LinkReader, LinkWriter, Router};
use super::offline::{OfflineQueue, Queued, Registry};
use super::packet::{self as p, Frame, Framing, PacketError};
use super::passwd::PasswordFile;
use super::retained::{Retained, RetainedStore};
use crate::topic;

/// How long a client may take from its TCP connect to a whole CONNECT.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a TLS handshake may take; each runs in its own task, so a silent client
/// only holds its own socket.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Per source address: a burst of this many connects…
pub const CONNECT_BURST: f64 = 30.0;
/// …then this many per second (a client looping on connect gets CONNACK "server
/// unavailable" / v5 0x9F "connection rate exceeded").
pub const CONNECT_RATE: f64 = 10.0;
/// What a PUBLISH may carry besides its payload (topic, packet id, v5 properties).
const HEADER_SLACK: usize = 2 * 65_536 + 16;
/// Packets the front itself sends one way while piping (acks, SUBACKs) wait here; a
/// peer that lets this many pile up is not reading and is disconnected.
const INJECT_QUEUE: usize = 1024;
/// Read buffer per direction and client.
const READ_BUF: usize = 16 * 1024;

/// Refusals' CONNACK codes: (MQTT 3.1.1 return code, MQTT 5 reason code).
const NOT_AUTHORIZED: (u8, u8) = (5, 0x87);
const SERVER_UNAVAILABLE: (u8, u8) = (3, 0x88);
const RATE_EXCEEDED: (u8, u8) = (3, 0x9f);
const KEEPALIVE_TOO_LONG: (u8, u8) = (2, 0x82);
/// SUBACK failure codes: 3.1.1 has only 0x80; v5 says why.
const SUB_FAILED: u8 = 0x80;
const SUB_NOT_AUTHORIZED_V5: u8 = 0x87;
const SUB_INVALID_FILTER_V5: u8 = 0x8f;
/// v5 UNSUBACK reason "no subscription existed".
const NO_SUBSCRIPTION_EXISTED_V5: u8 = 0x11;
/// v5 DISCONNECT reason "packet too large".
const PACKET_TOO_LARGE: u8 = 0x95;
/// v5 DISCONNECT reason "session taken over".
const SESSION_TAKEN_OVER: u8 = 0x8e;
/// rumqttd 0.20 numbers its QoS 1 deliveries 1..=100 (`MAX_PKID` in router/iobufs.rs);
/// the front numbers the retained messages it sends itself above that, and the client's
/// PUBACKs for those stop here.
const BROKER_MAX_PKID: u16 = 100;
/// How often a publisher held back by flow control looks again without being woken.
const FLOW_RECHECK: Duration = Duration::from_millis(100);
/// The packet id of a will the front publishes for a client (rumqttd's PUBACK for it
/// arrives when nobody waits for it).
const WILL_PKID: u16 = u16::MAX;
/// Where a CONNACK's return / reason code is (after its two-byte fixed header and the
/// session-present flags).
const CONNACK_CODE_AT: usize = 3;

/// What the front enforces (from `[broker]`).
pub struct Policy {
    pub passwords: Option<PasswordFile>,
    pub acl: Option<Arc<Acl>>,
    pub allow_anonymous: bool,
    pub max_connections: usize,
    pub max_subscriptions: usize,
    pub max_keepalive: u16,
    pub max_payload: usize,
    /// QoS 1 and 2 deliveries a client may have unacknowledged (rumqttd's own window is
    /// 100; the front holds deliveries back for a smaller one).
    pub max_inflight: u16,
    /// Per offline persistent session: messages kept, and for how long (zero: no limit).
    pub max_queued: usize,
    pub message_expiry: Duration,
    /// Retained messages (shared with the daemon's own publisher).
    pub retained: Arc<RetainedStore>,
    /// Flow control for subscribers (shared with the daemon's own publisher).
    pub flow: Arc<Flow>,
    /// rumqttd's router, which every client is connected to in process.
    pub router: Router,
    /// The subscriptions the front routes itself (shared with the daemon's own publisher).
    pub direct: Arc<direct::Table>,
}

/// The front's shared state: one for all listeners.
pub struct Front {
    policy: Policy,
    /// Clients past the CONNECT checks, for max_connections.
    clients: AtomicUsize,
    /// PUBLISHes dropped by the ACL (logged at each power of two).
    denied: AtomicU64,
    /// Connect-rate token buckets per source address.
    rate: Mutex<HashMap<IpAddr, Bucket>>,
    /// Persistent sessions, online or offline, by client id.
    sessions: Registry<Kept>,
    /// Offline sessions (each holds a connection to rumqttd).
    parked: AtomicUsize,
}

/// A connection to rumqttd's router, as one client's session uses it.
struct Link {
    br: LinkReader,
    bw: LinkWriter,
    /// Read from rumqttd, not yet passed on.
    buf: BytesMut,
}

/// A persistent session between connections: everything a returning client resumes.
struct Kept {
    level: u8,
    client_id: String,
    username: Option<String>,
    /// A persistent session (else it is only handed over to be ended).
    persistent: bool,
    /// The will, while nobody sent it.
    will: Option<OwnedWill>,
    all_readable: bool,
    link: Link,
    up: UpState,
    down: DownState,
    queue: OfflineQueue,
    /// Its place in the flow control (the offline session keeps receiving).
    joined: Joined,
    /// Its subscriptions on the front's route (its mailbox is closed while it is offline).
    target: Arc<Target>,
}

/// A CONNECT's will, owned.
struct OwnedWill {
    qos: u8,
    retain: bool,
    properties: Vec<u8>,
    topic: String,
    payload: Vec<u8>,
}

impl From<&p::Will<'_>> for OwnedWill {
    fn from(w: &p::Will<'_>) -> OwnedWill {
        OwnedWill {
            qos: w.qos,
            retain: w.retain,
            properties: w.properties.to_vec(),
            topic: w.topic.to_string(),
            payload: w.payload.to_vec(),
        }
    }
}

/// How the client → broker direction ended without an error.
enum UpEnd {
    /// The client closed the connection (without DISCONNECT).
    Closed,
    /// The client sent DISCONNECT (MQTT 5 reason 0x04: and wants its will sent).
    Disconnect { with_will: bool },
    /// Another connection with the same client id takes the session over.
    Claimed(oneshot::Sender<Kept>),
    /// rumqttd closed the connection.
    BrokerClosed,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Packet(#[from] PacketError),
    #[error("{0}")]
    Protocol(&'static str),
    #[error("no CONNECT within {} s", CONNECT_TIMEOUT.as_secs())]
    ConnectTimeout,
    #[error("keepalive expired")]
    KeepAlive,
    #[error("a PUBLISH payload of {0} bytes is over max_payload_size")]
    PayloadTooLarge(usize),
    #[error("not reading its acknowledgements")]
    Stalled,
}

/// A client's place under max_connections, given back on drop.
struct Slot<'a>(&'a AtomicUsize);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One connected client, as both directions see it.
struct Session {
    level: u8,
    /// What the front enforces (0 = none).
    keep_alive: u16,
    client_id: String,
    username: Option<String>,
    /// Every filter subscribed to so far lies wholly inside what the ACL lets the client
    /// read, so deliveries need no per-message Read check.
    all_readable: AtomicBool,
    /// SUBSCRIBEs on their way to rumqttd, by packet id, until their SUBACK.
    pending: Mutex<HashMap<u16, PendingSub>>,
    /// Packet ids of the retained messages the front sent at QoS 1, not yet acknowledged.
    injected: Mutex<InjectedIds>,
    /// A persistent session's QoS 1 deliveries from rumqttd the client has not
    /// acknowledged yet, by rumqttd's packet id (None: not persistent).
    in_flight: Option<Mutex<Vec<(u16, Queued)>>>,
    /// The delivery window (max_inflight, or an MQTT 5 client's receive maximum; rumqttd
    /// stops at 100 of its own deliveries anyway).
    window: Window,
    /// This client as a subscriber, for flow control.
    lag: Arc<Lag>,
    /// Its subscriptions on the front's route, and their mailbox.
    target: Arc<Target>,
}

/// A subscriber's place in the flow control, given up on drop.
struct Joined(Arc<Flow>, Arc<Lag>);

impl Drop for Joined {
    fn drop(&mut self) {
        self.0.leave(&self.1);
    }
}

/// QoS 1 and 2 deliveries to a client not acknowledged yet, against a limit.
struct Window {
    limit: u32,
    out: AtomicU32,
    acked: tokio::sync::Notify,
}

impl Window {
    fn new(limit: u32) -> Window {
        Window {
            limit,
            out: AtomicU32::new(0),
            acked: tokio::sync::Notify::new(),
        }
    }

    /// A place for one more delivery, if there is one.
    fn take(&self) -> bool {
        self.out
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.limit).then_some(n + 1)
            })
            .is_ok()
    }

    /// Deliveries the front makes itself (retained, an offline queue): counted, sent
    /// at once.
    fn add(&self, n: u32) {
        self.out.fetch_add(n, Ordering::AcqRel);
    }

    fn release(&self) {
        let _ = self
            .out
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        self.acked.notify_one();
    }
}

/// A SUBSCRIBE waiting for its SUBACK (rumqttd's, or the front's when no filter goes
/// to the router).
struct PendingSub {
    /// Per original filter: the code when the front decided (refused it, or granted it
    /// as a subscription on its own route); None = forwarded, the code comes from rumqttd.
    codes: Vec<Option<u8>>,
    filters: Vec<Planned>,
    subscription_id: Option<u32>,
}

/// One filter of a pending SUBSCRIBE.
struct Planned {
    filter: String,
    options: u8,
    /// The client was subscribed to it already (MQTT 5 retain handling 1).
    existed: bool,
    /// A subscription on the front's route ([`direct`]).
    direct: bool,
}

/// Packet ids above [`BROKER_MAX_PKID`] in use for the front's own QoS 1 deliveries.
#[derive(Default)]
struct InjectedIds {
    last: u16,
    in_use: HashSet<u16>,
}

impl InjectedIds {
    /// A free packet id, or None when every one is in use.
    fn take(&mut self) -> Option<u16> {
        if self.in_use.len() >= usize::from(u16::MAX - BROKER_MAX_PKID) {
            return None;
        }
        loop {
            self.last = if self.last <= BROKER_MAX_PKID || self.last == u16::MAX {
                BROKER_MAX_PKID + 1
            } else {
                self.last + 1
            };
            if self.in_use.insert(self.last) {
                return Some(self.last);
            }
        }
    }
}

impl Session {
    fn client(&self) -> Client<'_> {
        Client {
            username: self.username.as_deref(),
            client_id: &self.client_id,
        }
    }
}

/// What to do with one packet read from a peer.
enum Verdict {
    Forward,
    Drop,
    Replace(Vec<u8>),
    /// A PUBLISH the front delivered to every subscription itself: not for the router.
    Delivered,
}

/// What the client → broker direction hands the other direction, in one task: the other
/// direction is polled right after it (a `biased` select), so this needs no wake-up. (A
/// channel's wake-up of the task that is running makes tokio requeue it and wake another
/// worker thread: a thread switch for every PUBACK.)
#[derive(Default)]
struct Outbox(Mutex<std::collections::VecDeque<Out>>);

impl Outbox {
    /// Queue `out`; a peer that lets [`INJECT_QUEUE`] packets pile up is not reading.
    fn send(&self, out: Out) -> Result<(), SessionError> {
        let mut q = self.0.lock().map_err(|_| SessionError::Stalled)?;
        if q.len() >= INJECT_QUEUE {
            return Err(SessionError::Stalled);
        }
        q.push_back(out);
        Ok(())
    }

    /// Everything queued (pending while there is nothing: nothing but the other
    /// direction fills it, and the select polls this one after it).
    fn next(&self) -> impl std::future::Future<Output = std::collections::VecDeque<Out>> + '_ {
        std::future::poll_fn(|_| match self.0.lock() {
            Ok(mut q) if !q.is_empty() => std::task::Poll::Ready(std::mem::take(&mut *q)),
            _ => std::task::Poll::Pending,
        })
    }
}

/// What the client → broker direction hands the other direction to send.
enum Out {
    Packet(Vec<u8>),
    /// A SUBSCRIBE the router does not see: the SUBACK (and the retained messages) for
    /// the pending subscription with this packet id.
    Subscribed(u16),
}

impl Front {
    pub fn new(policy: Policy) -> Front {
        Front {
            policy,
            clients: AtomicUsize::new(0),
            denied: AtomicU64::new(0),
            rate: Mutex::new(HashMap::new()),
            sessions: Registry::default(),
            parked: AtomicUsize::new(0),
        }
    }

    /// Accept clients on `listener` for ever (TLS first when `tls` is set).
    pub async fn serve(self: Arc<Self>, listener: TcpListener, tls: Option<TlsAcceptor>) {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    log::warn!("broker: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let admitted = self.admit(peer.ip());
            let front = self.clone();
            match &tls {
                None => {
                    tokio::spawn(async move {
                        let (r, w) = stream.into_split();
                        front.client(r, w, peer, admitted).await;
                    });
                }
                Some(acceptor) => {
                    // A client over the connect rate still gets its handshake, so that
                    // it can be told why (CONNACK "server unavailable" / 0x9F).
                    let acceptor = acceptor.clone();
                    tokio::spawn(async move {
                        match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream))
                            .await
                        {
                            Ok(Ok(s)) => {
                                let (r, w) = tokio::io::split(s);
                                front.client(r, w, peer, admitted).await;
                            }
                            Ok(Err(e)) => {
                                log::info!("broker: TLS handshake with {peer} failed: {e}")
                            }
                            Err(_) => log::info!(
                                "broker: no TLS handshake from {peer} within {} s; closed",
                                TLS_HANDSHAKE_TIMEOUT.as_secs()
                            ),
                        }
                    });
                }
            }
        }
    }

    /// Take a connect token of `ip`'s bucket.
    fn admit(&self, ip: IpAddr) -> bool {
        let Ok(mut map) = self.rate.lock() else {
            return true;
        };
        let now = Instant::now();
        if map.len() > 4096 {
            // Forget the addresses whose bucket is full again.
            map.retain(|_, b| {
                now.duration_since(b.at).as_secs_f64() * CONNECT_RATE < CONNECT_BURST
            });
        }
        let b = map.entry(ip).or_insert(Bucket {
            tokens: CONNECT_BURST,
            at: now,
        });
        b.tokens =
            (b.tokens + now.duration_since(b.at).as_secs_f64() * CONNECT_RATE).min(CONNECT_BURST);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn slot(&self) -> Option<Slot<'_>> {
        let n = self.clients.fetch_add(1, Ordering::Relaxed) + 1;
        let slot = Slot(&self.clients);
        (n <= self.policy.max_connections).then_some(slot)
    }

    async fn client<R, W>(self: Arc<Self>, r: R, mut w: W, peer: SocketAddr, admitted: bool)
    where
        R: AsyncRead + Unpin + Send,
        W: AsyncWrite + Unpin + Send,
    {
        let mut level = 4;
        let result = self.session(r, &mut w, peer, admitted, &mut level).await;
        match result {
            Ok(()) => {}
            Err(SessionError::PayloadTooLarge(n)) => {
                log::info!("broker: client at {peer} disconnected: PUBLISH payload of {n} bytes is over max_payload_size");
                if level == 5 {
                    let _ = w.write_all(&p::disconnect_v5(PACKET_TOO_LARGE)).await;
                }
            }
            Err(SessionError::Packet(PacketError::TooLarge(n))) => {
                log::info!("broker: client at {peer} disconnected: packet of {n} bytes is over max_payload_size");
                if level == 5 {
                    let _ = w.write_all(&p::disconnect_v5(PACKET_TOO_LARGE)).await;
                }
            }
            Err(e) => log::debug!("broker: client at {peer}: {e}"),
        }
        let _ = w.shutdown().await;
    }

    /// Largest packet a client may send.
    fn packet_limit(&self) -> usize {
        self.policy
            .max_payload
            .saturating_add(HEADER_SLACK)
            .min(p::MAX_REMAINING + 5)
    }

    async fn refuse<W: AsyncWrite + Unpin>(
        w: &mut W,
        level: u8,
        code: (u8, u8),
        peer: SocketAddr,
        why: &str,
    ) -> Result<(), SessionError> {
        log::info!("broker: client at {peer} refused: {why}");
        let c = if level == 5 { code.1 } else { code.0 };
        w.write_all(&p::connack(level, c)).await?;
        Ok(())
    }

    async fn session<R, W>(
        self: &Arc<Self>,
        mut cr: R,
        cw: &mut W,
        peer: SocketAddr,
        admitted: bool,
        level_out: &mut u8,
    ) -> Result<(), SessionError>
    where
        R: AsyncRead + Unpin + Send,
        W: AsyncWrite + Unpin + Send,
    {
        let limit = self.packet_limit();
        let mut buf = BytesMut::with_capacity(READ_BUF);
        let f = tokio::time::timeout(CONNECT_TIMEOUT, read_frame(&mut cr, &mut buf, limit))
            .await
            .map_err(|_| SessionError::ConnectTimeout)??;
        if f.kind != p::CONNECT {
            return Err(SessionError::Protocol("first packet is not CONNECT"));
        }
        let c = p::parse_connect(&buf[..f.len], &f)?;
        if c.level != 4 && c.level != 5 {
            let why = format!("protocol level {} (only MQTT 3.1.1 and 5)", c.level);
            return Self::refuse(cw, 4, (1, 1), peer, &why).await;
        }
        let level = c.level;
        *level_out = level;
        if !admitted {
            return Self::refuse(cw, level, RATE_EXCEEDED, peer, "connects too often").await;
        }
        let Some(_slot) = self.slot() else {
            let why = format!("max_connections ({}) reached", self.policy.max_connections);
            return Self::refuse(cw, level, SERVER_UNAVAILABLE, peer, &why).await;
        };
        let session = Session {
            level,
            keep_alive: c.keep_alive.min(self.policy.max_keepalive),
            client_id: c.client_id.to_string(),
            username: c.username.map(str::to_string),
            all_readable: AtomicBool::new(true),
            pending: Mutex::new(HashMap::new()),
            injected: Mutex::default(),
            in_flight: None,
            window: {
                let limit = self.policy.max_inflight.min(c.receive_maximum).max(1);
                Window::new(u32::from(limit))
            },
            lag: Arc::default(),
            target: Arc::default(),
        };
        let password = c.password.map(<[u8]>::to_vec);
        let keep_alive = c.keep_alive;
        if !self.authorized(session.username.clone(), password).await {
            let why = format!(
                "not authorized (client id {:?}, username {:?})",
                session.client_id, session.username
            );
            return Self::refuse(cw, level, NOT_AUTHORIZED, peer, &why).await;
        }
        let mut server_keep_alive = None;
        if keep_alive > self.policy.max_keepalive {
            if level == 4 {
                let why = format!(
                    "keepalive {keep_alive} s is over max_keepalive ({} s)",
                    self.policy.max_keepalive
                );
                return Self::refuse(cw, level, KEEPALIVE_TOO_LONG, peer, &why).await;
            }
            server_keep_alive = Some(self.policy.max_keepalive);
        }
        let client_id = session.client_id.clone();
        let persistent = !client_id.is_empty()
            && if level == 5 {
                c.session_expiry > 0
            } else {
                !c.clean
            };
        let expiry = (level == 5 && c.session_expiry != u32::MAX)
            .then(|| Duration::from_secs(c.session_expiry.into()));
        let clean = c.clean;
        let will = c.will.as_ref().map(OwnedWill::from);
        // rumqttd's router sees a clean session without a will, under an id of the
        // front's, new for each connection: takeovers, persistent sessions and wills
        // are the front's (rumqttd 0.20's own takeover can panic its listener for good).
        let generation = self.sessions.generation();
        // rumqttd refuses ids with + $ # / (the front takes any).
        let name: String = client_id
            .chars()
            .map(|ch| if "+$#/".contains(ch) { '_' } else { ch })
            .collect();
        let internal_id = format!("{generation}-{name}");
        buf.advance(f.len);

        // The session this client id left (or still holds on another connection).
        let earlier = if client_id.is_empty() {
            None
        } else {
            self.sessions.claim(&client_id).await
        };
        let resumed = match earlier {
            Some(k)
                if k.persistent && !clean && k.level == level && k.username == session.username =>
            {
                Some(k)
            }
            Some(k) => {
                self.finish(k).await;
                None
            }
            None => None,
        };

        let (mut link, mut up_st, mut down_st, queue, joined, target) = match resumed {
            Some(k) => {
                session
                    .all_readable
                    .store(k.all_readable, Ordering::Relaxed);
                let mut up_st = k.up;
                up_st.aliases = Aliases::default();
                let mut down_st = k.down;
                down_st.aliases = Aliases::default();
                k.target.open();
                (k.link, up_st, down_st, Some(k.queue), k.joined, k.target)
            }
            None => {
                let link = match self.policy.router.connect(&internal_id, level) {
                    Ok((br, bw)) => Link {
                        br,
                        bw,
                        buf: BytesMut::new(),
                    },
                    Err(e) => {
                        let why = format!("the internal broker refused it: {e}");
                        return Self::refuse(cw, level, SERVER_UNAVAILABLE, peer, &why).await;
                    }
                };
                let flow = self.policy.flow.clone();
                let lag = flow.join();
                let target = self.policy.direct.join(
                    level,
                    &client_id,
                    session.username.as_deref(),
                    lag.clone(),
                );
                let joined = Joined(flow, lag);
                let (up, down) = (UpState::default(), DownState::default());
                (link, up, down, None, joined, target)
            }
        };
        let mut connack = local::connack(level);
        if queue.is_some() {
            connack[CONNACK_CODE_AT - 1] |= 0x01; // session present
        }
        match server_keep_alive {
            Some(k) => {
                let af = match p::frame(&connack, p::MAX_REMAINING)? {
                    Framing::Packet(af) => af,
                    Framing::Partial(_) => return Err(SessionError::Protocol("a short CONNACK")),
                };
                cw.write_all(&p::connack_with_keepalive(&connack, &af, k)?)
                    .await?
            }
            None => cw.write_all(&connack).await?,
        }
        log::debug!(
            "broker: client {client_id:?} connected from {peer} (MQTT {}{})",
            if level == 5 { "5" } else { "3.1.1" },
            if queue.is_some() {
                ", session resumed"
            } else {
                ""
            }
        );
        if let Some(mut queue) = queue {
            self.flush(&session, cw, &mut queue).await?;
        }

        let mut claim = (!client_id.is_empty()).then(|| self.sessions.hold(&client_id, generation));
        let in_flight = persistent.then(|| Mutex::new(Vec::new()));
        let session = Session {
            in_flight,
            lag: joined.1.clone(),
            target,
            ..session
        };
        let to_client = Outbox::default();
        let (to_broker, to_broker_rx) = mpsc::channel(INJECT_QUEUE);
        let up = self.client_to_broker(
            &session,
            cr,
            &mut link.bw,
            buf,
            &mut up_st,
            to_broker_rx,
            &to_client,
            claim.as_mut(),
        );
        let down = self.broker_to_client(
            &session,
            &mut link.br,
            cw,
            &mut link.buf,
            &mut down_st,
            &to_client,
            to_broker,
        );
        // The client → broker direction first: what it hands the other direction in
        // its [`Outbox`] is written when that is polled right after.
        let end = tokio::select! {
            biased;
            r = up => r,
            r = down => r.map(|()| UpEnd::BrokerClosed),
        };
        let (normal, result) = match end {
            Ok(UpEnd::BrokerClosed) => {
                self.forget(&session.target, &up_st);
                self.sessions.release(&client_id, generation);
                return Ok(());
            }
            Ok(UpEnd::Claimed(reply)) => {
                // Another connection with this client id takes the session over.
                if level == 5 {
                    let _ = cw.write_all(&p::disconnect_v5(SESSION_TAKEN_OVER)).await;
                }
                let kept = Kept {
                    persistent,
                    will,
                    ..self.keep(&session, link, up_st, down_st, joined).await
                };
                if let Err(kept) = reply.send(kept) {
                    // The new connection gave up waiting for it: it ends here.
                    self.finish(kept).await;
                }
                return Ok(());
            }
            Ok(UpEnd::Disconnect { with_will }) => (!with_will, Ok(())),
            Ok(UpEnd::Closed) => (false, Ok(())),
            Err(e) => (false, Err(e)),
        };
        if !normal {
            if let Some(w) = &will {
                self.send_will(level, session.client(), &mut link.bw, w)
                    .await;
            }
        }
        match claim.filter(|_| persistent) {
            Some(claim) if self.parked.load(Ordering::Relaxed) < self.policy.max_connections => {
                let kept = self.keep(&session, link, up_st, down_st, joined).await;
                log::debug!("broker: client {client_id:?} is offline; its session is kept");
                tokio::spawn(
                    self.clone()
                        .offline(client_id, generation, kept, claim, expiry),
                );
            }
            Some(_) => {
                log::warn!(
                    "broker: {} offline sessions kept already (max_connections); the session of client {client_id:?} ends",
                    self.policy.max_connections
                );
                self.forget(&session.target, &up_st);
                self.sessions.release(&client_id, generation);
                let _ = link.bw.write_all(&p::disconnect(level)).await;
            }
            None => {
                self.forget(&session.target, &up_st);
                self.sessions.release(&client_id, generation);
                let _ = link.bw.write_all(&p::disconnect(level)).await;
            }
        }
        result
    }

    /// End a session another connection took over without resuming it: its will goes
    /// out.
    async fn finish(&self, mut k: Kept) {
        if let Some(w) = k.will.take() {
            let client = Client {
                username: k.username.as_deref(),
                client_id: &k.client_id,
            };
            self.send_will(k.level, client, &mut k.link.bw, &w).await;
        }
        self.end(&mut k).await;
    }

    /// End a kept session: rumqttd is told the connection ends normally (it holds no
    /// will of a kept session anyway) and forgets its subscriptions; so does the front.
    async fn end(&self, k: &mut Kept) {
        self.forget(&k.target, &k.up);
        let _ = k.link.bw.write_all(&p::disconnect(k.level)).await;
        let _ = k.link.bw.shutdown().await;
    }

    /// A session is over: its subscriptions on the front's route go, and so does the
    /// router's count of its other filters.
    fn forget(&self, target: &Arc<Target>, up: &UpState) {
        let table = &self.policy.direct;
        table.leave(target);
        for filter in up.subscriptions.difference(&up.direct) {
            table.router_remove(filter);
        }
    }

    /// What an offline session keeps: the connection to rumqttd and the client's state;
    /// QoS 1 messages the client had not acknowledged go first into its queue (the front
    /// acknowledges them to rumqttd now).
    async fn keep(
        &self,
        s: &Session,
        mut link: Link,
        up: UpState,
        down: DownState,
        joined: Joined,
    ) -> Kept {
        let mut queue = OfflineQueue::new(self.policy.max_queued, self.policy.message_expiry);
        let in_flight = s
            .in_flight
            .as_ref()
            .and_then(|m| m.lock().ok().map(|mut v| std::mem::take(&mut *v)))
            .unwrap_or_default();
        let mut acks = Vec::with_capacity(in_flight.len() * 4);
        for (pkid, _) in &in_flight {
            acks.extend_from_slice(&p::ack(p::PUBACK, *pkid));
        }
        if !acks.is_empty() {
            let _ = link.bw.write_all(&acks).await;
        }
        queue.push_in_flight(in_flight.into_iter().map(|(_, q)| q).collect());
        s.target.close();
        Kept {
            level: s.level,
            client_id: s.client_id.clone(),
            username: s.username.clone(),
            persistent: true,
            will: None,
            all_readable: s.all_readable.load(Ordering::Relaxed),
            link,
            up,
            down,
            queue,
            joined,
            target: s.target.clone(),
        }
    }

    /// Send an offline session's queue to its client, which has just come back.
    async fn flush<W: AsyncWrite + Unpin>(
        &self,
        s: &Session,
        cw: &mut W,
        queue: &mut OfflineQueue,
    ) -> Result<(), SessionError> {
        let messages = queue.drain();
        if queue.dropped > 0 || queue.expired > 0 {
            log::warn!(
                "broker: client {:?} was offline: {} queued message(s) dropped over max_queued_messages ({}), {} older than message_expiry dropped",
                s.client_id,
                queue.dropped,
                self.policy.max_queued,
                queue.expired
            );
        }
        if messages.is_empty() {
            return Ok(());
        }
        let mut out = Vec::new();
        if let Ok(mut ids) = s.injected.lock() {
            for m in &messages {
                let mut qos = m.qos.min(1);
                let pkid = if qos > 0 {
                    ids.take().unwrap_or_else(|| {
                        qos = 0;
                        0
                    })
                } else {
                    0
                };
                let start = out.len();
                out.extend_from_slice(&p::publish(
                    s.level,
                    &m.topic,
                    qos,
                    pkid,
                    false,
                    &m.properties,
                    None,
                    &m.payload,
                ));
                if m.dup && qos > 0 {
                    out[start] |= 0x08;
                }
                if qos > 0 {
                    s.window.add(1);
                }
            }
        }
        log::debug!(
            "broker: client {:?} is back: {} queued message(s) sent",
            s.client_id,
            messages.len()
        );
        cw.write_all(&out).await?;
        cw.flush().await?;
        Ok(())
    }

    /// Publish a client's will, as rumqttd would have (the ACL still applies).
    async fn send_will(&self, level: u8, client: Client<'_>, bw: &mut LinkWriter, w: &OwnedWill) {
        if let Some(acl) = &self.policy.acl {
            if !acl.allows(client, &w.topic, Access::Write) {
                log::debug!(
                    "broker: ACL: client {:?} may not publish its will on {:?}",
                    client.client_id,
                    w.topic
                );
                return;
            }
        }
        let properties = if level == 5 {
            p::without_properties(&w.properties, &[p::WILL_DELAY]).unwrap_or_default()
        } else {
            Vec::new()
        };
        if w.retain {
            self.policy.retained.set(
                &w.topic,
                Retained {
                    qos: w.qos.min(1),
                    properties: properties.clone().into(),
                    payload: bytes::Bytes::copy_from_slice(&w.payload),
                },
            );
        }
        let message = direct::Message {
            topic: &w.topic,
            properties: &properties,
            payload: &w.payload,
            qos: w.qos,
        };
        let routes = &mut direct::Routes::default();
        if !self.policy.direct.publish(routes, None, &message) && w.qos == 0 {
            return;
        }
        let pkt = p::publish(
            level,
            &w.topic,
            w.qos.min(1),
            WILL_PKID,
            false,
            &properties,
            None,
            &w.payload,
        );
        let _ = bw.write_all(&pkt).await;
    }

    /// An offline session: keep its link to rumqttd's router, acknowledge and queue what
    /// the router delivers, until the client id connects again, the session expires
    /// (MQTT 5), or the router drops the link.
    async fn offline(
        self: Arc<Self>,
        client_id: String,
        generation: u64,
        mut kept: Kept,
        mut claim: oneshot::Receiver<oneshot::Sender<Kept>>,
        expiry: Option<Duration>,
    ) {
        self.parked.fetch_add(1, Ordering::Relaxed);
        let _parked = Slot(&self.parked);
        let ends = expiry.map(|d| tokio::time::Instant::now() + d);
        loop {
            if let Err(e) = self.queue_deliveries(&client_id, &mut kept).await {
                log::debug!("broker: offline session of {client_id:?}: {e}");
                self.forget(&kept.target, &kept.up);
                break;
            }
            tokio::select! {
                n = kept.link.br.read_buf(&mut kept.link.buf) => {
                    if !matches!(n, Ok(n) if n > 0) {
                        self.forget(&kept.target, &kept.up);
                        break;
                    }
                }
                reply = &mut claim => {
                    let unclaimed = match reply {
                        Ok(reply) => reply.send(kept).err(),
                        Err(_) => Some(kept),
                    };
                    if let Some(kept) = unclaimed {
                        // Nobody took it after all: it ends here (the front's table and
                        // the router forget it too).
                        self.finish(kept).await;
                    }
                    return;
                }
                _ = async { match ends { Some(at) => tokio::time::sleep_until(at).await, None => std::future::pending().await } } => {
                    log::debug!("broker: the session of client {client_id:?} expired");
                    self.end(&mut kept).await;
                    break;
                }
            }
        }
        self.sessions.release(&client_id, generation);
    }

    /// Acknowledge and queue every whole packet rumqttd sent an offline session.
    async fn queue_deliveries(&self, client_id: &str, kept: &mut Kept) -> Result<(), SessionError> {
        let mut acks = Vec::new();
        while let Framing::Packet(f) = p::frame(&kept.link.buf, p::MAX_REMAINING + 5)? {
            let pkt = &kept.link.buf[..f.len];
            match f.kind {
                p::PUBLISH => {
                    let publish = p::parse_publish(pkt, &f, kept.level)?;
                    self.policy.flow.delivered(&kept.joined.1, 1);
                    match publish.qos {
                        1 => acks.extend_from_slice(&p::ack(p::PUBACK, publish.pkid)),
                        2 => acks.extend_from_slice(&p::ack(p::PUBREC, publish.pkid)),
                        // QoS 0 is not queued for an offline client (as mosquitto).
                        _ => {
                            kept.link.buf.advance(f.len);
                            continue;
                        }
                    }
                    let topic = kept
                        .down
                        .aliases
                        .resolve(publish.topic, publish.topic_alias)
                        .to_string();
                    let readable = match &self.policy.acl {
                        Some(acl) if !kept.all_readable => {
                            let client = Client {
                                username: kept.username.as_deref(),
                                client_id,
                            };
                            kept.down
                                .decisions
                                .allows(acl, client, &topic, Access::Read)
                        }
                        _ => true,
                    };
                    if readable {
                        let properties = if kept.level == 5 {
                            p::without_properties(publish.properties, &[p::TOPIC_ALIAS])?
                        } else {
                            Vec::new()
                        };
                        kept.queue.push(Queued {
                            at: Instant::now(),
                            qos: publish.qos,
                            topic: topic.into(),
                            properties: properties.into(),
                            payload: bytes::Bytes::copy_from_slice(publish.payload),
                            dup: false,
                        });
                    }
                }
                p::PUBREL => {
                    if let Some(id) = p::ack_pkid(pkt, &f) {
                        acks.extend_from_slice(&p::ack(p::PUBCOMP, id));
                    }
                }
                _ => {}
            }
            kept.link.buf.advance(f.len);
        }
        if !acks.is_empty() {
            kept.link.bw.write_all(&acks).await?;
        }
        Ok(())
    }

    async fn authorized(
        self: &Arc<Self>,
        username: Option<String>,
        password: Option<Vec<u8>>,
    ) -> bool {
        match (&self.policy.passwords, username) {
            (Some(_), Some(user)) => {
                // PBKDF2 may be slow by design: off the async workers.
                let front = self.clone();
                tokio::task::spawn_blocking(move || {
                    front
                        .policy
                        .passwords
                        .as_ref()
                        .is_some_and(|pw| pw.verify(&user, password.as_deref().unwrap_or(&[])))
                })
                .await
                .unwrap_or(false)
            }
            _ => self.policy.allow_anonymous,
        }
    }

    /// Client → rumqttd.
    #[allow(clippy::too_many_arguments)]
    async fn client_to_broker<R>(
        &self,
        s: &Session,
        mut cr: R,
        bw: &mut LinkWriter,
        mut buf: BytesMut,
        st: &mut UpState,
        mut inject: mpsc::Receiver<Vec<u8>>,
        to_client: &Outbox,
        mut claim: Option<&mut oneshot::Receiver<oneshot::Sender<Kept>>>,
    ) -> Result<UpEnd, SessionError>
    where
        R: AsyncRead + Unpin,
    {
        let limit = self.packet_limit();
        // Keepalive 0: the client may stay silent for ever.
        let enforced = s.keep_alive > 0;
        let idle = Duration::from_millis(u64::from(s.keep_alive.max(1)) * 1500);
        let timer = tokio::time::sleep(idle);
        tokio::pin!(timer);
        let flow = &*self.policy.flow;
        let mut blocked = false;
        loop {
            // Every whole packet in the buffer: forward runs of them in one write.
            let mut start = 0;
            let mut pos = 0;
            let need = loop {
                match p::frame(&buf[pos..], limit)? {
                    Framing::Partial(n) => break n,
                    Framing::Packet(f) if f.kind == p::DISCONNECT => {
                        bw.write_all(&buf[start..pos]).await?;
                        // MQTT 5 reason 0x04: "disconnect with will message". The
                        // front ends the router's side itself, after any will.
                        let with_will = s.level == 5 && buf.get(pos + f.header) == Some(&0x04);
                        return Ok(UpEnd::Disconnect { with_will });
                    }
                    Framing::Packet(f) => {
                        let end = pos + f.len;
                        // Flow control: the size of a PUBLISH that may go, None if it
                        // waits for a subscriber that is behind.
                        let size = if f.kind == p::PUBLISH && flow.active() {
                            let publish = p::parse_publish(&buf[pos..end], &f, s.level)?;
                            let topic = st.aliases.resolve(publish.topic, publish.topic_alias);
                            if flow.must_wait(&mut st.routes, topic, &s.lag) {
                                blocked = true;
                                break None;
                            }
                            st.topic.clear();
                            st.topic.push_str(topic);
                            Some(topic.len() + publish.payload.len())
                        } else {
                            None
                        };
                        let verdict = self.up_packet(s, st, &buf[pos..end], &f, to_client)?;
                        if let (Some(n), false) = (size, matches!(verdict, Verdict::Drop)) {
                            flow.route(&mut st.routes, &st.topic, n);
                        }
                        match verdict {
                            Verdict::Forward => {}
                            Verdict::Drop | Verdict::Delivered => {
                                if start < pos {
                                    bw.write_all(&buf[start..pos]).await?;
                                }
                                start = end;
                            }
                            Verdict::Replace(new) => {
                                bw.write_all(&buf[start..pos]).await?;
                                bw.write_all(&new).await?;
                                start = end;
                            }
                        }
                        pos = end;
                    }
                }
            };
            if start < pos {
                bw.write_all(&buf[start..pos]).await?;
            }
            buf.advance(pos);
            // Held back: nothing is read, and the buffer does not grow meanwhile.
            let room = if blocked { 0 } else { reserve(&mut buf, need) };
            let mut room = (&mut buf).limit(room);
            tokio::select! {
                n = cr.read_buf(&mut room), if !blocked => {
                    if n? == 0 {
                        return Ok(UpEnd::Closed);
                    }
                    timer.as_mut().reset(tokio::time::Instant::now() + idle);
                }
                // Not reading the client meanwhile is the point (TCP slows it down);
                // its keepalive is not its fault.
                () = flow.wait(FLOW_RECHECK), if blocked => {
                    timer.as_mut().reset(tokio::time::Instant::now() + idle);
                    blocked = false;
                }
                Ok(reply) = async {
                    match claim.as_deref_mut() {
                        Some(rx) => rx.await,
                        None => std::future::pending().await,
                    }
                } => return Ok(UpEnd::Claimed(reply)),
                Some(pkt) = inject.recv() => bw.write_all(&pkt).await?,
                _ = &mut timer, if enforced => return Err(SessionError::KeepAlive),
            }
        }
    }

    fn up_packet(
        &self,
        s: &Session,
        st: &mut UpState,
        pkt: &[u8],
        f: &Frame,
        to_client: &Outbox,
    ) -> Result<Verdict, SessionError> {
        match f.kind {
            p::PUBLISH => {
                let retain = f.flags & 0x01 != 0;
                let publish = p::parse_publish(pkt, f, s.level)?;
                if publish.payload.len() > self.policy.max_payload {
                    return Err(SessionError::PayloadTooLarge(publish.payload.len()));
                }
                let topic = st.aliases.resolve(publish.topic, publish.topic_alias);
                if topic.is_empty() {
                    // An alias the client never defined: rumqttd's to answer.
                    return Ok(Verdict::Forward);
                }
                if let Some(acl) = &self.policy.acl {
                    if !st.decisions.allows(acl, s.client(), topic, Access::Write) {
                        self.deny_publish(s, &mut st.dropped_qos2, topic, &publish, to_client)?;
                        return Ok(Verdict::Drop);
                    }
                }
                let aliased = publish.topic_alias.is_some();
                let without_alias;
                let properties = if aliased {
                    without_alias = p::without_properties(publish.properties, &[p::TOPIC_ALIAS])?;
                    &without_alias[..]
                } else {
                    publish.properties
                };
                if retain {
                    self.policy.retained.set(
                        topic,
                        Retained {
                            qos: publish.qos,
                            properties: properties.into(),
                            payload: bytes::Bytes::copy_from_slice(publish.payload),
                        },
                    );
                }
                let message = direct::Message {
                    topic,
                    properties,
                    payload: publish.payload,
                    qos: publish.qos,
                };
                let routes = &mut st.direct_routes;
                let to_router = self
                    .policy
                    .direct
                    .publish(routes, Some(&s.target), &message);
                // Only the router answers a QoS 2 PUBLISH (PUBREC, PUBREL, PUBCOMP).
                if !to_router && publish.qos < 2 {
                    if publish.qos == 1 {
                        to_client.send(Out::Packet(p::ack(p::PUBACK, publish.pkid).to_vec()))?;
                    }
                    return Ok(Verdict::Delivered);
                }
                if aliased {
                    // The router may not have seen the PUBLISH that defined the alias:
                    // it gets the topic itself.
                    let mut pkt = p::publish(
                        s.level,
                        topic,
                        publish.qos,
                        publish.pkid,
                        false,
                        properties,
                        None,
                        publish.payload,
                    );
                    pkt[0] |= f.flags & 0x08; // DUP
                    return Ok(Verdict::Replace(pkt));
                }
                if !retain {
                    return Ok(Verdict::Forward);
                }
                // rumqttd keeps no retained message of its own (see retained.rs).
                let mut pkt = pkt.to_vec();
                pkt[0] &= !0x01;
                Ok(Verdict::Replace(pkt))
            }
            p::PUBACK | p::PUBCOMP => {
                s.window.release();
                if f.kind == p::PUBCOMP {
                    return Ok(Verdict::Forward);
                }
                match p::ack_pkid(pkt, f) {
                    Some(id) if id > BROKER_MAX_PKID => {
                        if let Ok(mut ids) = s.injected.lock() {
                            ids.in_use.remove(&id);
                        }
                        Ok(Verdict::Drop)
                    }
                    Some(id) => {
                        if let Some(Ok(mut v)) = s.in_flight.as_ref().map(Mutex::lock) {
                            v.retain(|(pkid, _)| *pkid != id);
                        }
                        Ok(Verdict::Forward)
                    }
                    None => Ok(Verdict::Forward),
                }
            }
            p::PUBREL => match p::ack_pkid(pkt, f) {
                Some(id) if st.dropped_qos2.remove(&id) => {
                    to_client.send(Out::Packet(p::ack(p::PUBCOMP, id).to_vec()))?;
                    Ok(Verdict::Drop)
                }
                _ => Ok(Verdict::Forward),
            },
            p::SUBSCRIBE => {
                let sub = p::parse_subscribe(pkt, f, s.level, false)?;
                let mut codes = Vec::with_capacity(sub.filters.len());
                let mut allowed = Vec::with_capacity(sub.filters.len());
                let mut filters = Vec::with_capacity(sub.filters.len());
                // Filters the router has that become the front's.
                let mut moved = Vec::new();
                let table = &self.policy.direct;
                for &(filter, options) in &sub.filters {
                    let existed = st.subscriptions.contains(filter);
                    let permitted = self
                        .policy
                        .acl
                        .as_ref()
                        .is_none_or(|acl| acl.allows_subscribe(s.client(), filter));
                    let mut direct = false;
                    if !topic::valid_filter(filter) {
                        log::debug!(
                            "broker: client {:?} subscribed to an invalid filter {filter:?}",
                            s.client_id
                        );
                        codes.push(Some(if s.level == 5 {
                            SUB_INVALID_FILTER_V5
                        } else {
                            SUB_FAILED
                        }));
                    } else if !permitted {
                        log::debug!(
                            "broker: ACL: client {:?} may not subscribe to {filter:?}",
                            s.client_id
                        );
                        codes.push(Some(if s.level == 5 {
                            SUB_NOT_AUTHORIZED_V5
                        } else {
                            SUB_FAILED
                        }));
                    } else if !existed && st.subscriptions.len() >= self.policy.max_subscriptions {
                        log::info!(
                            "broker: client {:?} is at max_subscriptions_per_client ({}); {filter:?} refused",
                            s.client_id,
                            self.policy.max_subscriptions
                        );
                        codes.push(Some(SUB_FAILED));
                    } else {
                        if let Some(acl) = &self.policy.acl {
                            if !acl.allows_whole_subscription(s.client(), filter) {
                                s.all_readable.store(false, Ordering::Relaxed);
                            }
                        }
                        st.subscriptions.insert(filter.to_string());
                        // Not a shared subscription, QoS 0, or QoS 1 of a clean session
                        // (a persistent session's QoS 1 messages are queued by the
                        // router's link while it is offline): the front's.
                        let on_router = existed && !st.direct.contains(filter);
                        let qos = options & 0x03;
                        let persistent = s.in_flight.is_some();
                        direct = !filter.starts_with("$share/")
                            && (qos == 0 || (qos == 1 && !persistent));
                        if direct {
                            if on_router {
                                // rumqttd 0.20 would keep delivering at the old QoS.
                                table.router_remove(filter);
                                moved.push((filter, 0));
                            }
                            st.direct.insert(filter.to_string());
                            codes.push(Some(qos));
                        } else {
                            if st.direct.remove(filter) {
                                table.unsubscribe(&s.target, filter);
                            }
                            if !on_router {
                                table.router_add(filter);
                            }
                            allowed.push((filter, options));
                            codes.push(None);
                        }
                    }
                    filters.push(Planned {
                        filter: filter.to_string(),
                        options,
                        existed,
                        direct,
                    });
                }
                let subscription_id = match sub.properties {
                    Some(props) => p::subscription_id(props)?,
                    None => None,
                };
                let all = allowed.len() == sub.filters.len();
                // The front's own subscriptions start now (an UNSUBSCRIBE right behind
                // finds them), but what they get waits until the SUBACK and the
                // retained messages are out.
                if filters.iter().any(|f| f.direct) {
                    s.target.hold(sub.pkid);
                    for f in filters.iter().filter(|f| f.direct) {
                        table.subscribe(&s.target, &f.filter, f.options, subscription_id);
                    }
                }
                if let Ok(mut pending) = s.pending.lock() {
                    pending.insert(
                        sub.pkid,
                        PendingSub {
                            codes,
                            filters,
                            subscription_id,
                        },
                    );
                }
                // The router answers an UNSUBSCRIBE, which nobody waits for (the front
                // drops rumqttd's UNSUBACKs).
                let mut to_router = if moved.is_empty() {
                    Vec::new()
                } else {
                    p::unsubscribe(sub.pkid, sub.properties.map(|_| &[][..]), &moved)
                };
                if allowed.is_empty() {
                    // Nothing for the router: the other direction answers.
                    to_client.send(Out::Subscribed(sub.pkid))?;
                    return Ok(match to_router.is_empty() {
                        true => Verdict::Drop,
                        false => Verdict::Replace(to_router),
                    });
                }
                if all {
                    return Ok(Verdict::Forward);
                }
                to_router.extend(p::subscribe(sub.pkid, sub.properties, &allowed));
                Ok(Verdict::Replace(to_router))
            }
            p::UNSUBSCRIBE => {
                let unsub = p::parse_subscribe(pkt, f, s.level, true)?;
                let mut codes = Vec::with_capacity(unsub.filters.len());
                let mut forward = Vec::new();
                for &(filter, _) in &unsub.filters {
                    let existed = st.subscriptions.remove(filter);
                    self.policy.flow.set_filter(&s.lag, filter, false);
                    if st.direct.remove(filter) {
                        self.policy.direct.unsubscribe(&s.target, filter);
                    } else if existed {
                        self.policy.direct.router_remove(filter);
                        forward.push((filter, 0));
                    }
                    codes.push(if existed {
                        0
                    } else {
                        NO_SUBSCRIPTION_EXISTED_V5
                    });
                }
                // The front answers: rumqttd 0.20 sends one UNSUBACK per filter it had,
                // and none for a filter it did not have.
                to_client.send(Out::Packet(p::unsuback(unsub.pkid, s.level, &codes)))?;
                if forward.is_empty() {
                    return Ok(Verdict::Drop);
                }
                Ok(Verdict::Replace(p::unsubscribe(
                    unsub.pkid,
                    unsub.properties,
                    &forward,
                )))
            }
            p::CONNECT => Err(SessionError::Protocol("a second CONNECT")),
            _ => Ok(Verdict::Forward),
        }
    }

    /// A PUBLISH the ACL does not let the client make: counted, acknowledged, dropped.
    fn deny_publish(
        &self,
        s: &Session,
        dropped_qos2: &mut HashSet<u16>,
        topic: &str,
        publish: &p::Publish<'_>,
        to_client: &Outbox,
    ) -> Result<(), SessionError> {
        let n = self.denied.fetch_add(1, Ordering::Relaxed) + 1;
        log::debug!(
            "broker: ACL: client {:?} may not publish on {topic:?}; dropped",
            s.client_id
        );
        if n.is_power_of_two() {
            log::info!("broker: ACL: {n} PUBLISH(es) denied and dropped so far (last: client {:?} on {topic:?})", s.client_id);
        }
        match publish.qos {
            1 => to_client.send(Out::Packet(p::ack(p::PUBACK, publish.pkid).to_vec()))?,
            2 => {
                dropped_qos2.insert(publish.pkid);
                to_client.send(Out::Packet(p::ack(p::PUBREC, publish.pkid).to_vec()))?;
            }
            _ => {}
        }
        Ok(())
    }

    /// Append to `out` the retained messages a new subscription to `filter` gets,
    /// granted QoS `granted` (at most 1: the front does not run QoS 2 exchanges itself).
    #[allow(clippy::too_many_arguments)]
    fn retained_for(
        &self,
        s: &Session,
        st: &mut DownState,
        filter: &str,
        granted: u8,
        options: u8,
        existed: bool,
        subscription_id: Option<u32>,
        out: &mut Vec<u8>,
    ) {
        if s.level == 5 {
            // Retain handling: 0 send, 1 send unless the subscription existed, 2 don't.
            match (options >> 4) & 0x03 {
                0 => {}
                1 if !existed => {}
                _ => return,
            }
        }
        let found = self.policy.retained.matching(filter);
        if found.is_empty() {
            return;
        }
        let check = self
            .policy
            .acl
            .as_ref()
            .filter(|_| !s.all_readable.load(Ordering::Relaxed));
        let Ok(mut ids) = s.injected.lock() else {
            return;
        };
        let mut counted = 0;
        for (topic, m) in found {
            if let Some(acl) = check {
                if !st.decisions.allows(acl, s.client(), &topic, Access::Read) {
                    continue;
                }
            }
            let mut qos = m.qos.min(granted).min(1);
            let pkid = if qos > 0 {
                ids.take().unwrap_or_else(|| {
                    qos = 0;
                    0
                })
            } else {
                0
            };
            counted += u32::from(qos > 0);
            out.extend_from_slice(&p::publish(
                s.level,
                &topic,
                qos,
                pkid,
                true,
                &m.properties,
                subscription_id,
                &m.payload,
            ));
        }
        s.window.add(counted);
    }

    /// The SUBACK for the pending SUBSCRIBE `pkid` (`codes` from the router, in the
    /// order of the filters it got; `pkt`: its SUBACK), followed by the retained messages
    /// of the new subscriptions. The mailbox of the front's own subscriptions, held since
    /// the SUBSCRIBE, is let go: their first deliveries come after these.
    fn subscribed(
        &self,
        s: &Session,
        st: &mut DownState,
        pkid: u16,
        codes: &[u8],
        properties: Option<&[u8]>,
        pkt: Option<&[u8]>,
    ) -> Verdict {
        let planned = s.pending.lock().ok().and_then(|mut m| m.remove(&pkid));
        let Some(planned) = planned else {
            return match pkt {
                Some(_) => Verdict::Forward,
                None => Verdict::Drop,
            };
        };
        let spliced = planned.codes.iter().any(Option::is_some);
        let mut from_broker = codes.iter();
        let codes: Vec<u8> = planned
            .codes
            .iter()
            .map(|c| c.unwrap_or_else(|| from_broker.next().copied().unwrap_or(SUB_FAILED)))
            .collect();
        let mut out = Vec::new();
        for (sub, &code) in planned.filters.iter().zip(&codes) {
            if code < SUB_FAILED {
                // Counted from now on.
                self.policy.flow.set_filter(&s.lag, &sub.filter, true);
                self.retained_for(
                    s,
                    st,
                    &sub.filter,
                    code,
                    sub.options,
                    sub.existed,
                    planned.subscription_id,
                    &mut out,
                );
            }
        }
        // Written before anything the mailbox got meanwhile (the caller writes it first).
        s.target.release(pkid);
        let mut suback = match pkt {
            Some(pkt) if !spliced => {
                if out.is_empty() {
                    return Verdict::Forward;
                }
                pkt.to_vec()
            }
            _ => p::suback(pkid, s.level, properties, &codes),
        };
        suback.append(&mut out);
        Verdict::Replace(suback)
    }

    /// rumqttd → client.
    #[allow(clippy::too_many_arguments)]
    async fn broker_to_client<W>(
        &self,
        s: &Session,
        br: &mut LinkReader,
        cw: &mut W,
        buf: &mut BytesMut,
        st: &mut DownState,
        outbox: &Outbox,
        to_broker: mpsc::Sender<Vec<u8>>,
    ) -> Result<(), SessionError>
    where
        W: AsyncWrite + Unpin,
    {
        // What the mailbox of the client's subscriptions on the front's route held.
        let mut mail = Vec::new();
        // QoS 1 deliveries of the front's wait in the mailbox for the client's window.
        let mut mail_waits = false;
        loop {
            let mut start = 0;
            let mut pos = 0;
            // A delivery waits for the client's window (when it is a small one).
            let mut blocked = false;
            let mut delivered = 0;
            // The router's packets come whole (a link buffer grows as they are added).
            loop {
                match p::frame(&buf[pos..], p::MAX_REMAINING + 5)? {
                    Framing::Partial(_) => break,
                    Framing::Packet(f) => {
                        let qos1 = f.kind == p::PUBLISH && (f.flags >> 1) & 0x03 > 0;
                        let counted = qos1.then_some(&s.window);
                        if counted.is_some_and(|w| !w.take()) {
                            blocked = true;
                            break;
                        }
                        delivered += u64::from(f.kind == p::PUBLISH);
                        let end = pos + f.len;
                        match self.down_packet(s, st, &buf[pos..end], &f, &to_broker)? {
                            Verdict::Forward => {}
                            Verdict::Drop | Verdict::Delivered => {
                                if let Some(w) = counted {
                                    w.release();
                                }
                                cw.write_all(&buf[start..pos]).await?;
                                start = end;
                            }
                            Verdict::Replace(new) => {
                                cw.write_all(&buf[start..pos]).await?;
                                cw.write_all(&new).await?;
                                start = end;
                            }
                        }
                        pos = end;
                    }
                }
            }
            if start < pos {
                cw.write_all(&buf[start..pos]).await?;
            }
            cw.flush().await?;
            self.policy.flow.delivered(&s.lag, delivered);
            buf.advance(pos);
            let acked = async {
                if blocked || mail_waits {
                    s.window.acked.notified().await
                } else {
                    std::future::pending().await
                }
            };
            tokio::select! {
                n = br.read_buf(buf), if !blocked => {
                    // rumqttd closed the connection (or it broke): the session is over.
                    if !matches!(n, Ok(n) if n > 0) {
                        return Ok(());
                    }
                }
                () = acked => {
                    if mail_waits {
                        mail_waits = self.deliver_mail(s, cw, &mut mail).await?;
                    }
                }
                () = s.target.ready() => {
                    mail_waits = self.deliver_mail(s, cw, &mut mail).await?;
                }
                queued = outbox.next() => {
                    // Everything queued in one write (a batch of PUBLISHes read from
                    // the client gets its PUBACKs together).
                    let mut pkts = Vec::new();
                    for out in queued {
                        match out {
                            Out::Packet(mut pkt) => pkts.append(&mut pkt),
                            Out::Subscribed(pkid) => {
                                if let Verdict::Replace(mut pkt) =
                                    self.subscribed(s, st, pkid, &[], None, None)
                                {
                                    pkts.append(&mut pkt);
                                }
                            }
                        }
                    }
                    cw.write_all(&pkts).await?;
                    cw.flush().await?;
                }
            }
        }
    }

    /// Write what the client's mailbox holds (QoS 1 deliveries as far as the window
    /// lets them); whether QoS 1 deliveries are left waiting for it.
    async fn deliver_mail<W: AsyncWrite + Unpin>(
        &self,
        s: &Session,
        cw: &mut W,
        mail: &mut Vec<u8>,
    ) -> Result<bool, SessionError> {
        let (n, waits) = s.target.take(mail, || {
            if !s.window.take() {
                return None;
            }
            let id = s.injected.lock().ok().and_then(|mut ids| ids.take());
            if id.is_none() {
                s.window.release();
            }
            id
        });
        if n > 0 {
            cw.write_all(mail).await?;
            cw.flush().await?;
            self.policy.flow.delivered(&s.lag, n);
        }
        Ok(waits)
    }

    fn down_packet(
        &self,
        s: &Session,
        st: &mut DownState,
        pkt: &[u8],
        f: &Frame,
        to_broker: &mpsc::Sender<Vec<u8>>,
    ) -> Result<Verdict, SessionError> {
        match f.kind {
            p::PUBLISH => {
                let track = s.in_flight.is_some() && (f.flags >> 1) & 0x03 == 1;
                let check = self
                    .policy
                    .acl
                    .as_ref()
                    .filter(|_| !s.all_readable.load(Ordering::Relaxed));
                if !track && check.is_none() {
                    return Ok(Verdict::Forward);
                }
                let publish = p::parse_publish(pkt, f, s.level)?;
                let topic = st.aliases.resolve(publish.topic, publish.topic_alias);
                if let Some(acl) = check {
                    if !st.decisions.allows(acl, s.client(), topic, Access::Read) {
                        match publish.qos {
                            1 => send(to_broker, p::ack(p::PUBACK, publish.pkid).to_vec())?,
                            2 => {
                                st.dropped_qos2.insert(publish.pkid);
                                send(to_broker, p::ack(p::PUBREC, publish.pkid).to_vec())?;
                            }
                            _ => {}
                        }
                        return Ok(Verdict::Drop);
                    }
                }
                if let Some(Ok(mut v)) = track
                    .then(|| s.in_flight.as_ref().map(Mutex::lock))
                    .flatten()
                {
                    let properties = if s.level == 5 {
                        p::without_properties(publish.properties, &[p::TOPIC_ALIAS])?
                    } else {
                        Vec::new()
                    };
                    v.push((
                        publish.pkid,
                        Queued {
                            at: Instant::now(),
                            qos: 1,
                            topic: topic.into(),
                            properties: properties.into(),
                            payload: bytes::Bytes::copy_from_slice(publish.payload),
                            dup: true,
                        },
                    ));
                }
                Ok(Verdict::Forward)
            }
            p::PUBREL => match p::ack_pkid(pkt, f) {
                Some(id) if st.dropped_qos2.remove(&id) => {
                    send(to_broker, p::ack(p::PUBCOMP, id).to_vec())?;
                    Ok(Verdict::Drop)
                }
                _ => Ok(Verdict::Forward),
            },
            p::SUBACK => {
                let ack = p::parse_suback(pkt, f, s.level)?;
                Ok(self.subscribed(s, st, ack.pkid, ack.codes, ack.properties, Some(pkt)))
            }
            // The front answers UNSUBSCRIBEs itself.
            p::UNSUBACK => Ok(Verdict::Drop),
            _ => Ok(Verdict::Forward),
        }
    }
}

/// What the client → broker direction remembers.
#[derive(Default)]
struct UpState {
    aliases: Aliases,
    decisions: Decisions,
    /// Distinct filters subscribed to (max_subscriptions_per_client).
    subscriptions: HashSet<String>,
    /// QoS 2 PUBLISHes the ACL dropped, whose PUBREL the front answers.
    dropped_qos2: HashSet<u16>,
    /// Flow control: who gets which topic, and the topic of the PUBLISH at hand.
    routes: Routes,
    topic: String,
    /// Of `subscriptions`, the ones the front routes (the others are the router's).
    direct: HashSet<String>,
    /// Who gets which topic on the front's route.
    direct_routes: direct::Routes,
}

/// What the broker → client direction remembers.
#[derive(Default)]
struct DownState {
    aliases: Aliases,
    decisions: Decisions,
    dropped_qos2: HashSet<u16>,
}

/// ACL decisions of one client and direction by topic (the client, and so the answer
/// for a topic, never changes during a session; devices publish on a few topics).
#[derive(Default)]
struct Decisions(HashMap<String, bool>);

/// Topics remembered per client and direction before the cache starts over.
const DECISIONS_KEPT: usize = 4096;

impl Decisions {
    fn allows(&mut self, acl: &Acl, client: Client<'_>, topic: &str, access: Access) -> bool {
        if let Some(&ok) = self.0.get(topic) {
            return ok;
        }
        let ok = acl.allows(client, topic, access);
        if self.0.len() >= DECISIONS_KEPT {
            self.0.clear();
        }
        self.0.insert(topic.to_string(), ok);
        ok
    }
}

/// MQTT 5 topic aliases of one direction.
#[derive(Default)]
struct Aliases(HashMap<u16, String>);

impl Aliases {
    /// The topic a PUBLISH is about (`topic` is empty when only the alias names it).
    fn resolve<'a>(&'a mut self, topic: &'a str, alias: Option<u16>) -> &'a str {
        match alias {
            None => topic,
            Some(a) if topic.is_empty() => self.0.get(&a).map(String::as_str).unwrap_or(""),
            Some(a) => {
                self.0.insert(a, topic.to_string());
                topic
            }
        }
    }
}

fn send<T>(tx: &mpsc::Sender<T>, pkt: T) -> Result<(), SessionError> {
    tx.try_send(pkt).map_err(|_| SessionError::Stalled)
}

/// Room for the next read from a client, which reads no more than that: the rest of a
/// packet whose length is known, or a read buffer. (A read as large as the spare
/// capacity would let a buffer that is held back with data in it double each time.)
fn reserve(buf: &mut BytesMut, need: Option<usize>) -> usize {
    let want = need.map_or(READ_BUF, |n| n.saturating_sub(buf.len()).max(READ_BUF / 4));
    if buf.capacity() - buf.len() < want {
        buf.reserve(want);
    }
    want
}

/// Read until `buf` starts with a whole packet.
async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut BytesMut,
    limit: usize,
) -> Result<Frame, SessionError> {
    loop {
        let room = match p::frame(buf, limit)? {
            Framing::Packet(f) => return Ok(f),
            Framing::Partial(n) => reserve(buf, n),
        };
        if r.read_buf(&mut (&mut *buf).limit(room)).await? == 0 {
            return Err(SessionError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
    }
}
