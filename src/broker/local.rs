//! A client's connection to rumqttd's router, in process: the front writes and reads
//! MQTT packets as bytes (as it would on a socket), and this turns them into the
//! router's packets and back, through one of rumqttd's local links.
//!
//! Before, every client had a loopback TCP connection to a listener of rumqttd; at a
//! steady 5 000 msgs/s that cost two more socket writes and reads and three more thread
//! wake-ups per message than mosquitto's one (rumqttd's network task, its router, the
//! front's task on the other side), and 2–3× mosquitto's CPU per message. Now a message
//! goes client socket → front task → router thread → front task → client socket
//! (≈ 1.7–2× mosquitto's CPU per message: the router's own thread is still a hop, see
//! benches/README.md, session 4). So most subscriptions skip the router altogether
//! ([`super::direct`]); these links carry a persistent session's QoS 1 subscriptions,
//! QoS 2, `$share` groups and the daemon's own subscriptions.
//!
//! rumqttd 0.20's `LinkTx::send` pushes a packet into the link's buffer and queues one
//! event per packet on the router's bounded channel (1000), blocking when it is full.
//! The router takes the whole buffer on each event, so [`LinkWriter`] queues an event
//! only when the buffer was empty: a busy publisher costs the router one event per batch
//! and the channel holds at most one event per link.

use std::future::Future;
use std::io;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::BytesMut;
use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::protocol::v4::V4;
use rumqttd::protocol::v5::V5;
use rumqttd::protocol::{
    ConnAck, ConnAckProperties, ConnectReturnCode, Disconnect, DisconnectReasonCode, Packet,
    Protocol,
};
use rumqttd::Notification;
use tokio::sync::Notify;

/// rumqttd's router accepts this many topic aliases from an MQTT 5 client (its
/// `TOPIC_ALIAS_MAX`); the CONNACK says so, as rumqttd's own did.
const TOPIC_ALIAS_MAX: u16 = 4096;
/// What one [`LinkReader::read_buf`] call gathers at most before it returns.
const READ_CHUNK: usize = 64 * 1024;
/// Packets a link's buffer may hold that the router has not taken yet; a writer with
/// this many waits (as a full socket buffer would make it). The buffer is a
/// `VecDeque<Packet>` of 392 B per packet (whatever the payload), and it keeps its
/// largest size: unbounded, ten flat-out publishers grew them to ~6 MiB. (Waiting on a
/// 1 ms timer alone cost a flat-out 1 → 1 about half its msgs/s; waiting for the
/// router's next notification, see [`Progress`], costs nothing measurable.)
const LINK_BACKLOG: usize = 256;
/// A waiting writer looks again after this long at the latest.
const BACKLOG_RECHECK: Duration = Duration::from_millis(1);

/// The router's progress, as the links see it: a writer over its backlog waits for
/// the next notification any link receives (the router has worked through a batch).
#[derive(Default)]
struct Progress {
    waiting: AtomicUsize,
    notify: Notify,
}

/// One writer waiting in [`Progress`], for as long as this lives.
struct Waiting<'a>(&'a Progress);

impl<'a> Waiting<'a> {
    fn new(p: &'a Progress) -> Waiting<'a> {
        p.waiting.fetch_add(1, Ordering::SeqCst);
        Waiting(p)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

/// rumqttd's router, for the front's connections.
#[derive(Clone)]
pub struct Router {
    broker: Arc<rumqttd::Broker>,
    progress: Arc<Progress>,
}

impl Router {
    pub fn new(broker: rumqttd::Broker) -> Router {
        Router {
            broker: Arc::new(broker),
            progress: Arc::default(),
        }
    }

    /// A new connection under `id` (clean session, no will). rumqttd answers on a
    /// blocking channel; its router thread never waits for anything of ours, so the
    /// answer takes microseconds and is waited for in place (a thread of its own per
    /// connect cost more).
    pub fn connect(&self, id: &str, level: u8) -> io::Result<(LinkReader, LinkWriter)> {
        let (tx, rx) = refused(self.broker.link(id))?;
        let codec = Codec::new(level);
        let gone = Arc::new(AtomicBool::new(false));
        Ok((
            LinkReader {
                rx,
                codec,
                gone: gone.clone(),
                progress: self.progress.clone(),
            },
            LinkWriter {
                tx,
                codec,
                pending: BytesMut::new(),
                closed: false,
                gone,
                progress: self.progress.clone(),
            },
        ))
    }

    /// The daemon's own link (made once, at start).
    pub fn link(&self, id: &str) -> io::Result<(LinkTx, LinkRx)> {
        refused(self.broker.link(id))
    }
}

fn refused<T>(r: Result<T, rumqttd::local::LinkError>) -> io::Result<T> {
    r.map_err(|e| io::Error::new(io::ErrorKind::ConnectionRefused, e.to_string()))
}

/// The wire format of one protocol level.
#[derive(Clone, Copy)]
enum Codec {
    V4,
    V5,
}

impl Codec {
    fn new(level: u8) -> Codec {
        if level == 5 {
            Codec::V5
        } else {
            Codec::V4
        }
    }

    fn read(self, stream: &mut BytesMut) -> Result<Packet, rumqttd::protocol::Error> {
        match self {
            Codec::V4 => V4.read_mut(stream, usize::MAX),
            Codec::V5 => V5.read_mut(stream, usize::MAX),
        }
    }

    fn write(self, packet: Packet, out: &mut BytesMut) -> Result<usize, rumqttd::protocol::Error> {
        match self {
            Codec::V4 => V4.write(packet, out),
            Codec::V5 => V5.write(packet, out),
        }
    }
}

/// The CONNACK rumqttd's listener would have sent for a new clean session.
pub fn connack(level: u8) -> Vec<u8> {
    let ack = ConnAck {
        session_present: false,
        code: ConnectReturnCode::Success,
    };
    let properties = (level == 5).then(|| ConnAckProperties {
        topic_alias_max: Some(TOPIC_ALIAS_MAX),
        ..Default::default()
    });
    let mut out = BytesMut::new();
    match Codec::new(level).write(Packet::ConnAck(ack, properties), &mut out) {
        Ok(_) => out.to_vec(),
        // A CONNACK without properties always encodes; this cannot be reached.
        Err(_) => vec![0x20, 0x02, 0x00, 0x00],
    }
}

/// Front → router: whole MQTT packets in, the router's packets out.
pub struct LinkWriter {
    tx: LinkTx,
    codec: Codec,
    /// Bytes of a packet not written whole yet.
    pending: BytesMut,
    /// A DISCONNECT went to the router: the link is gone there.
    closed: bool,
    /// The router has dropped the link (anything sent now would be an event for a
    /// connection it does not know, which it logs as an error).
    gone: Arc<AtomicBool>,
    progress: Arc<Progress>,
}

impl LinkWriter {
    /// Pass `bytes` (MQTT packets, as a client sends them) to the router; waits while
    /// the router is [`LINK_BACKLOG`] packets behind on this link.
    pub async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.write(bytes)?;
        while self.backlogged() {
            let progress = self.progress.clone();
            // Counted while waiting, also when the wait is cancelled.
            let _waiting = Waiting::new(&progress);
            let mut notified = pin!(progress.notify.notified());
            notified.as_mut().enable();
            if self.backlogged() {
                let _ = tokio::time::timeout(BACKLOG_RECHECK, notified).await;
            }
        }
        Ok(())
    }

    fn backlogged(&self) -> bool {
        self.tx.buffer().len() >= LINK_BACKLOG && !self.gone.load(Ordering::Relaxed)
    }

    /// End the connection normally (the router drops its subscriptions).
    pub async fn shutdown(&mut self) -> io::Result<()> {
        self.close();
        Ok(())
    }

    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.closed || self.gone.load(Ordering::Relaxed) {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        self.pending.extend_from_slice(bytes);
        loop {
            let packet = match self.codec.read(&mut self.pending) {
                Ok(p) => p,
                Err(rumqttd::protocol::Error::InsufficientBytes(_)) => return Ok(()),
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string())),
            };
            let last = matches!(packet, Packet::Disconnect(..));
            self.push(packet)?;
            if last {
                self.closed = true;
                return Ok(());
            }
        }
    }

    fn push(&mut self, packet: Packet) -> io::Result<()> {
        {
            let mut buffer = self.tx.buffer();
            if !buffer.is_empty() {
                // The router has an event for this link that it has not handled yet
                // (it takes the whole buffer when it does): this packet goes with it.
                buffer.push_back(packet);
                return Ok(());
            }
        }
        match now(self.tx.send(packet)) {
            Some(Ok(_)) => Ok(()),
            Some(Err(e)) => Err(io::Error::new(io::ErrorKind::BrokenPipe, e.to_string())),
            None => Err(io::Error::other(
                "the router's queue did not take the event",
            )),
        }
    }

    fn close(&mut self) {
        if !self.closed && !self.gone.load(Ordering::Relaxed) {
            self.closed = true;
            let bye = Disconnect {
                reason_code: DisconnectReasonCode::NormalDisconnection,
            };
            let _ = self.push(Packet::Disconnect(bye, None));
        }
    }
}

impl Drop for LinkWriter {
    /// A link nobody closes would stay subscribed in the router for good.
    fn drop(&mut self) {
        self.close();
    }
}

/// Router → front: the router's notifications as MQTT packets.
pub struct LinkReader {
    rx: LinkRx,
    codec: Codec,
    gone: Arc<AtomicBool>,
    progress: Arc<Progress>,
}

impl LinkReader {
    /// Wait for what the router has for this connection and append it to `buf` as MQTT
    /// packets; 0 when the router has dropped the connection. Cancel-safe (it waits only
    /// for the router's signal).
    pub async fn read_buf(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        let before = buf.len();
        loop {
            let first = match self.rx.next().await {
                Ok(n) => n,
                Err(_) => {
                    self.gone.store(true, Ordering::Relaxed);
                    return Ok(buf.len() - before);
                }
            };
            let mut unscheduled = false;
            let mut next = first;
            loop {
                if let Some(n) = next {
                    self.append(n, buf, &mut unscheduled)?;
                }
                if buf.len() - before >= READ_CHUNK {
                    break;
                }
                // More that came with the same signal (or a signal already there).
                next = match now(self.rx.next()) {
                    Some(Ok(Some(n))) => Some(n),
                    _ => break,
                };
            }
            if unscheduled {
                // The router stops sending to a link until it says it is ready again.
                self.rx
                    .ready()
                    .map_err(|e| io::Error::new(io::ErrorKind::BrokenPipe, e.to_string()))?;
            }
            if self.progress.waiting.load(Ordering::SeqCst) > 0 {
                self.progress.notify.notify_waiters();
            }
            if buf.len() > before {
                return Ok(buf.len() - before);
            }
        }
    }

    fn append(
        &self,
        n: Notification,
        buf: &mut BytesMut,
        unscheduled: &mut bool,
    ) -> io::Result<()> {
        if matches!(n, Notification::Unschedule) {
            *unscheduled = true;
            return Ok(());
        }
        let packet: Option<Packet> = n.into();
        if let Some(packet) = packet {
            self.codec
                .write(packet, buf)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        }
        Ok(())
    }
}

/// Poll `f` once: rumqttd's `send` and a `next` with notifications at hand finish on
/// their first poll (`send` has no await in it; a `next` that would wait is dropped,
/// which only unregisters its waker).
fn now<F: Future>(f: F) -> Option<F::Output> {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => Some(v),
        Poll::Pending => None,
    }
}

#[cfg(test)]
mod tests {
    use super::super::packet::{self as p, Framing};
    use super::*;

    fn router() -> Router {
        let config = rumqttd::Config {
            id: 0,
            router: super::super::router_config(4),
            ..Default::default()
        };
        Router::new(rumqttd::Broker::new(config))
    }

    /// The next whole packet a reader gives, within 5 s.
    async fn next_packet(r: &mut LinkReader, buf: &mut BytesMut) -> Vec<u8> {
        loop {
            if let Ok(Framing::Packet(f)) = p::frame(buf, p::MAX_REMAINING) {
                return buf.split_to(f.len).to_vec();
            }
            let n = tokio::time::timeout(Duration::from_secs(5), r.read_buf(buf))
                .await
                .expect("the router answers within 5 s")
                .expect("read");
            assert!(n > 0, "the router dropped the link");
        }
    }

    /// 5 000 messages written in one go (far over the backlog, so the writer waits for
    /// the router) reach a subscriber on another link, all and in order, over 3.1.1 and 5.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn messages_pass_from_link_to_link_in_order() {
        for level in [4u8, 5] {
            let router = router();
            let (mut sub_r, mut sub_w) =
                router.connect(&format!("sub{level}"), level).expect("sub");
            let props: &[u8] = &[];
            let properties = (level == 5).then_some(props);
            sub_w
                .write_all(&p::subscribe(1, properties, &[("t/#", 0)]))
                .await
                .expect("subscribe");
            let mut buf = BytesMut::new();
            let suback = next_packet(&mut sub_r, &mut buf).await;
            assert_eq!(suback[0] >> 4, p::SUBACK);
            let (_pub_r, mut pub_w) = router.connect(&format!("pub{level}"), level).expect("pub");
            let mut all = Vec::new();
            for i in 0u32..5000 {
                all.extend(p::publish(
                    level,
                    "t/x",
                    0,
                    0,
                    false,
                    &[],
                    None,
                    &i.to_be_bytes(),
                ));
            }
            let writer = tokio::spawn(async move {
                pub_w.write_all(&all).await.expect("publish");
                pub_w
            });
            for i in 0u32..5000 {
                let pkt = next_packet(&mut sub_r, &mut buf).await;
                let Ok(Framing::Packet(f)) = p::frame(&pkt, p::MAX_REMAINING) else {
                    panic!("a whole packet");
                };
                let publish = p::parse_publish(&pkt, &f, level).expect("publish");
                assert_eq!(
                    (publish.topic, publish.payload),
                    ("t/x", &i.to_be_bytes()[..])
                );
            }
            let mut pub_w = writer.await.expect("writer");
            pub_w.shutdown().await.expect("shutdown");
            assert!(pub_w
                .write_all(&p::publish(level, "t/x", 0, 0, false, &[], None, b"late"))
                .await
                .is_err());
        }
    }

    #[test]
    fn connack_is_what_a_client_expects() {
        assert_eq!(connack(4), vec![0x20, 0x02, 0x00, 0x00]);
        let v5 = connack(5);
        assert_eq!(&v5[..4], &[0x20, v5[1], 0x00, 0x00]);
        // Properties: topic alias maximum (0x22) = 4096.
        assert_eq!(&v5[4..], &[0x03, 0x22, 0x10, 0x00]);
    }
}
