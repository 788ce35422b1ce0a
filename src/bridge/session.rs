//! The upstream session: one rumqttc connection at a time, reconnected with jittered
//! back-off forever; the outbox drained through it.
//!
//! Each connection gets a fresh rumqttc client: rumqttc would replay its own pending
//! queue after a reconnect, but the outbox already keeps every unacknowledged message,
//! so a row is only deleted after its PUBACK and anything in flight at a disconnect is
//! sent again from the outbox (duplicates are possible, losses are not).
//!
//! Order: rows appended while connected ("live") go first, in id order; rows that were
//! waiting when the connection came up (the backlog) follow at `drain_rate` per second,
//! also in id order. Up to [`WINDOW`] QoS 1 messages are in flight at once.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::QoS;
use sensorgate_api::Backoff;
use tokio_util::sync::CancellationToken;

use super::client::{self, Client, Events, Happened};
use super::Shared;
use crate::broker::Message;
use crate::buffer::Row;

/// QoS 1 messages in flight at once.
pub const WINDOW: usize = 100;
/// Rows read from the outbox at a time.
const PREFETCH: usize = 500;
/// Acknowledged rows are deleted in batches at least this often.
const ACK_FLUSH: Duration = Duration::from_millis(50);
/// After a stop: how long in-flight messages get for their PUBACK.
const STOP_DEADLINE: Duration = Duration::from_secs(3);
/// A connection that lasted this long resets the back-off.
const STABLE: Duration = Duration::from_secs(30);

/// Where an upstream client connects.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

/// `mqtt://host[:port]` or `mqtts://host[:port]` (1883 / 8883 by default).
pub fn parse_url(url: &str) -> Result<(String, u16, bool), String> {
    let (rest, tls) = if let Some(r) = url.strip_prefix("mqtts://") {
        (r, true)
    } else if let Some(r) = url.strip_prefix("mqtt://") {
        (r, false)
    } else {
        return Err(format!("{url:?} must start with mqtt:// or mqtts://"));
    };
    let rest = rest.trim_end_matches('/');
    let default = if tls { 8883 } else { 1883 };
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("{url:?}: unclosed '['"))?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| format!("{url:?}: bad port"))?,
            None => default,
        };
        (h.to_string(), port)
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) => (
                h.to_string(),
                p.parse().map_err(|_| format!("{url:?}: bad port {p:?}"))?,
            ),
            None => (rest.to_string(), default),
        }
    };
    if host.is_empty() || host.contains('/') {
        return Err(format!("{url:?}: expected mqtt[s]://HOST[:PORT]"));
    }
    Ok((host, port, tls))
}

/// What one connection did.
enum Ended {
    Stopped,
    Lost(String),
}

#[derive(Debug)]
enum Sent {
    Row { id: i64, qos: u8 },
    Status,
    Other,
}

/// State of one connection.
struct Conn {
    connected: bool,
    since: Instant,
    /// Publishes handed to rumqttc, not yet written (in order).
    requested: VecDeque<Sent>,
    /// Written QoS 1 publishes by packet id, waiting for PUBACK.
    inflight: HashMap<u16, Sent>,
    acks: Vec<i64>,
    last_flush: Instant,
    live_cursor: i64,
    live: VecDeque<Row>,
    backlog_max: i64,
    backlog_cursor: i64,
    backlog: VecDeque<Row>,
    /// The next backlog rows, read while the ones in `backlog` go out.
    backlog_next: Option<tokio::task::JoinHandle<Result<Vec<Row>, String>>>,
    backlog_done: bool,
    tokens: f64,
    last_refill: Instant,
    status_acked: bool,
    /// Messages an MQTT 5 upstream refused in its PUBACK.
    refused: u64,
}

impl Conn {
    fn new() -> Conn {
        let now = Instant::now();
        Conn {
            connected: false,
            since: now,
            requested: VecDeque::new(),
            inflight: HashMap::new(),
            acks: Vec::new(),
            last_flush: now,
            live_cursor: 0,
            live: VecDeque::new(),
            backlog_max: 0,
            backlog_cursor: 0,
            backlog: VecDeque::new(),
            backlog_next: None,
            backlog_done: true,
            tokens: 0.0,
            last_refill: now,
            status_acked: false,
            refused: 0,
        }
    }

    fn in_flight(&self) -> usize {
        self.requested.len() + self.inflight.len()
    }
}

fn qos(q: u8) -> QoS {
    match q {
        0 => QoS::AtMostOnce,
        2 => QoS::ExactlyOnce,
        _ => QoS::AtLeastOnce,
    }
}

pub struct Session {
    pub shared: Arc<Shared>,
    pub endpoint: Endpoint,
    pub client_id: String,
    pub credentials: Option<(String, String)>,
    pub keepalive: Duration,
    /// MQTT 5 instead of 3.1.1.
    pub v5: bool,
    /// Remote form of `<prefix>/status` (Last Will and online/offline).
    pub status_topic: String,
    pub drain_rate: u32,
    pub stop: CancellationToken,
}

impl Session {
    fn options(&self) -> client::Options<'_> {
        client::Options {
            v5: self.v5,
            client_id: &self.client_id,
            host: &self.endpoint.host,
            port: self.endpoint.port,
            keepalive: self.keepalive,
            inflight: WINDOW as u16,
            will_topic: &self.status_topic,
            credentials: self
                .credentials
                .as_ref()
                .map(|(u, p)| (u.as_str(), p.as_str())),
            tls: self.endpoint.tls.clone(),
            capacity: WINDOW * 2 + 16,
        }
    }

    /// Connect, drain, reconnect, until stopped.
    pub async fn run(self) {
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        let mut failures: u32 = 0;
        loop {
            if self.stop.is_cancelled() {
                return;
            }
            let mut conn = Conn::new();
            let ended = self.connection(&mut conn).await;
            self.flush_acks(&mut conn).await;
            if conn.connected {
                self.shared.outbox.set_uplink(false).await;
            }
            match ended {
                Ended::Stopped => return,
                Ended::Lost(e) => {
                    if conn.connected && conn.since.elapsed() >= STABLE {
                        backoff.reset();
                    }
                    if conn.connected {
                        log::warn!(
                            "upstream {}:{} lost: {e}; messages wait in the buffer",
                            self.endpoint.host,
                            self.endpoint.port
                        );
                        failures = 0;
                    } else {
                        failures += 1;
                    }
                    // 1, 2, 4, 8, … failed tries in a row: a line each, not one per try.
                    if !conn.connected && failures.is_power_of_two() {
                        log::warn!(
                            "upstream {}:{} unreachable ({failures} tries): {e}",
                            self.endpoint.host,
                            self.endpoint.port
                        );
                    }
                    let delay = backoff.next_delay();
                    tokio::select! {
                        _ = self.stop.cancelled() => return,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    async fn connection(&self, c: &mut Conn) -> Ended {
        let (client, mut events) = client::new(&self.options());
        let mut appended = self.shared.outbox.appended();
        let mut tick = tokio::time::interval(ACK_FLUSH);
        let mut stopping: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = self.stop.cancelled(), if stopping.is_none() => {
                    if !c.connected {
                        return Ended::Stopped;
                    }
                    stopping = Some(Instant::now() + STOP_DEADLINE);
                }
                ev = events.poll() => match ev {
                    Ok(event) => {
                        if let Err(e) = self.on_event(&client, c, event).await {
                            return Ended::Lost(e);
                        }
                    }
                    Err(e) => return Ended::Lost(e),
                },
                _ = appended.changed() => {}
                _ = tick.tick() => {}
            }
            if c.acks.len() >= PREFETCH || c.last_flush.elapsed() >= ACK_FLUSH {
                self.flush_acks(c).await;
            }
            if let Some(deadline) = stopping {
                let drained = c.in_flight() == 0;
                if drained || Instant::now() >= deadline {
                    return self.goodbye(&client, &mut events, c).await;
                }
            } else if c.connected {
                if let Err(e) = self.fill(&client, c).await {
                    return Ended::Lost(e);
                }
            }
        }
    }

    async fn on_event(&self, client: &Client, c: &mut Conn, event: Happened) -> Result<(), String> {
        match event {
            Happened::Connected => {
                c.connected = true;
                self.shared.outbox.set_uplink(true).await;
                c.since = Instant::now();
                log::info!(
                    "upstream connected: {}:{} as {}",
                    self.endpoint.host,
                    self.endpoint.port,
                    self.client_id
                );
                for (filter, q) in self.shared.routes.remote_filters() {
                    client.subscribe(filter, qos(q))?;
                }
                client.publish(&self.status_topic, QoS::AtLeastOnce, true, "online")?;
                c.requested.push_back(Sent::Other);
                // Everything stored now is backlog; what comes later is live.
                let max = self
                    .shared
                    .outbox
                    .max_id()
                    .await
                    .map_err(|e| e.to_string())?;
                log::debug!("upstream: backlog is every row up to id {max}");
                c.backlog_max = max;
                c.live_cursor = max;
                c.backlog_cursor = 0;
                c.backlog.clear();
                c.backlog_next = None;
                c.backlog_done = false;
                c.tokens = 0.0;
                c.last_refill = Instant::now();
            }
            Happened::Sent(pkid) => match c.requested.pop_front() {
                Some(Sent::Row { id, qos: 0 }) => c.acks.push(id),
                Some(sent) => {
                    c.inflight.insert(pkid, sent);
                }
                None => {}
            },
            Happened::Acked { pkid, refused } => match c.inflight.remove(&pkid) {
                Some(Sent::Row { id, .. }) => {
                    if let Some(reason) = refused {
                        // An MQTT 5 broker that refuses a message will refuse it again:
                        // it is dropped, not retried forever.
                        c.refused += 1;
                        log::error!(
                            "upstream refused a message ({reason}); it is dropped from the \
                             buffer ({} refused on this connection)",
                            c.refused
                        );
                    }
                    c.acks.push(id)
                }
                Some(Sent::Status) => c.status_acked = true,
                _ => {}
            },
            Happened::Message {
                topic,
                payload,
                retain,
            } => self.downlink(topic, payload, retain).await,
            Happened::Disconnected | Happened::Other => {}
        }
        Ok(())
    }

    /// A message from upstream on an in route: deliver it locally.
    async fn downlink(&self, topic: String, payload: bytes::Bytes, retain: bool) {
        let Some(local) = self.shared.routes.inbound(&topic) else {
            log::debug!("upstream message on {topic} matches no in route");
            return;
        };
        self.shared.echoes.remember(&local, &payload);
        let msg = Message::new(local, payload, retain);
        if let Err(e) = self.shared.broker.publish(vec![msg]).await {
            log::warn!("cannot deliver a message from upstream locally: {e}");
        }
    }

    /// Hand rows to rumqttc while the window has room: live rows first, then the backlog
    /// at `drain_rate`.
    async fn fill(&self, client: &Client, c: &mut Conn) -> Result<(), String> {
        let now = Instant::now();
        let rate = f64::from(self.drain_rate.max(1));
        c.tokens = (c.tokens + now.duration_since(c.last_refill).as_secs_f64() * rate).min(rate);
        c.last_refill = now;
        while c.in_flight() < WINDOW {
            if c.live.is_empty() && *self.shared.outbox.appended().borrow() > c.live_cursor {
                let rows = self
                    .shared
                    .outbox
                    .peek(c.live_cursor, None, PREFETCH)
                    .await
                    .map_err(|e| e.to_string())?;
                c.live.extend(rows);
            }
            let row = if let Some(r) = c.live.pop_front() {
                c.live_cursor = r.id;
                r
            } else if !c.backlog_done && c.tokens >= 1.0 {
                if c.backlog.is_empty() {
                    let rows = match c.backlog_next.take() {
                        Some(next) => next.await.map_err(|e| e.to_string())??,
                        None => self
                            .shared
                            .outbox
                            .peek(c.backlog_cursor, Some(c.backlog_max), PREFETCH)
                            .await
                            .map_err(|e| e.to_string())?,
                    };
                    if rows.is_empty() {
                        log::debug!("upstream: backlog sent (up to id {})", c.backlog_cursor);
                        c.backlog_done = true;
                        break;
                    }
                    c.backlog.extend(rows);
                    // Read the rows after these while these go out: the drain does not
                    // stop for the database between batches.
                    if let Some(last) = c.backlog.back().map(|r| r.id) {
                        let outbox = self.shared.outbox.clone();
                        let up_to = c.backlog_max;
                        c.backlog_next = Some(tokio::spawn(async move {
                            outbox
                                .peek(last, Some(up_to), PREFETCH)
                                .await
                                .map_err(|e| e.to_string())
                        }));
                    }
                }
                let Some(r) = c.backlog.pop_front() else {
                    break;
                };
                c.backlog_cursor = r.id;
                c.tokens -= 1.0;
                r
            } else {
                break;
            };
            client.publish(row.topic, qos(row.qos), row.retain, row.payload)?;
            c.requested.push_back(Sent::Row {
                id: row.id,
                qos: row.qos,
            });
        }
        Ok(())
    }

    async fn flush_acks(&self, c: &mut Conn) {
        c.last_flush = Instant::now();
        if c.acks.is_empty() {
            return;
        }
        let ids = std::mem::take(&mut c.acks);
        if let Err(e) = self.shared.outbox.ack_later(ids).await {
            // The rows stay and are sent again: a duplicate, not a loss.
            log::warn!("buffer: cannot delete acknowledged messages: {e}");
        }
    }

    /// Clean stop: `offline` on the status topic (retained, acknowledged or a short
    /// deadline), then DISCONNECT (so the broker does not publish the Last Will).
    async fn goodbye(&self, client: &Client, events: &mut Events, c: &mut Conn) -> Ended {
        self.flush_acks(c).await;
        if c.in_flight() > 0 {
            log::info!(
                "upstream: {} message(s) not acknowledged at stop stay in the buffer",
                c.in_flight()
            );
        }
        if client
            .publish(&self.status_topic, QoS::AtLeastOnce, true, "offline")
            .is_ok()
        {
            c.requested.push_back(Sent::Status);
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut disconnecting = false;
        while Instant::now() < deadline {
            if c.status_acked && !disconnecting {
                let _ = client.disconnect();
                disconnecting = true;
            }
            match tokio::time::timeout_at(deadline.into(), events.poll()).await {
                Ok(Ok(Happened::Disconnected)) => break,
                Ok(Ok(event)) => {
                    let _ = self.on_event(client, c, event).await;
                }
                Ok(Err(_)) | Err(_) => break,
            }
        }
        self.flush_acks(c).await;
        log::info!("upstream disconnected");
        Ended::Stopped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("mqtts://broker.example.com:8883"),
            Ok(("broker.example.com".into(), 8883, true))
        );
        assert_eq!(
            parse_url("mqtt://10.0.0.1"),
            Ok(("10.0.0.1".into(), 1883, false))
        );
        assert_eq!(parse_url("mqtts://h"), Ok(("h".into(), 8883, true)));
        assert_eq!(
            parse_url("mqtt://[::1]:1999"),
            Ok(("::1".into(), 1999, false))
        );
        assert!(parse_url("http://h").is_err());
        assert!(parse_url("mqtt://h:x").is_err());
        assert!(parse_url("mqtt://").is_err());
    }
}
