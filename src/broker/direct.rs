//! Subscriptions routed by the front itself: QoS 0 ones, and QoS 1 ones of clean
//! sessions.
//!
//! Through rumqttd's router a message costs three thread wake-ups: the task reading the
//! publisher, the router's own thread, the task writing to the subscriber (mosquitto's
//! single loop wakes once), and at a steady 5 000 msgs/s that was 1.7–2× mosquitto's
//! CPU per message, almost all of it in the kernel's task switching. These
//! subscriptions need nothing the router does that the front cannot do (a clean session
//! keeps no messages once it is gone), so the front keeps them in this table instead of
//! the router's: the publisher's task appends each message to the subscriber's mailbox,
//! and the task writing to the subscriber takes the whole mailbox at once — QoS 0 as
//! ready packets, QoS 1 as far as the client's window (`max_inflight`, receive maximum)
//! has room, under packet ids above the router's.
//!
//! A message goes to the router as well only when the router has a subscription that
//! matches it (a persistent session's QoS 1 subscriptions, whose offline queue hangs on
//! its router link; QoS 2; `$share` groups; the daemon's own links): the table counts
//! those filters too. A QoS 2 PUBLISH always goes to the router (it answers the
//! publisher); a QoS 1 PUBLISH that goes only here is acknowledged by the front.
//!
//! Delivery order per publisher and subscription is kept. Flow control
//! ([`super::flow`]) counts these deliveries like the router's: a publisher waits for a
//! subscriber that is behind. A mailbox holds at most [`MAILBOX_BYTES`]; what a
//! subscriber that stopped reading (and so stopped holding publishers, see
//! [`super::flow::STALL`]) does not take is dropped and logged (WARN for QoS 0, ERROR
//! for QoS 1: data lost). An offline persistent session gets no QoS 0 messages (as with
//! mosquitto).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;
use tokio::sync::Notify;

use super::acl::{Access, Acl, Client};
use super::flow::{Flow, Lag};
use super::packet as p;
use crate::topic;

/// Bytes of packets a subscriber's mailbox holds before messages to it are dropped.
pub const MAILBOX_BYTES: usize = 1024 * 1024;
/// Topics a publisher remembers before its cache starts over.
const ROUTES_KEPT: usize = 4096;
/// A taken mailbox buffer larger than this is not kept for the next one.
const SPARE_KEPT: usize = 64 * 1024;

/// The front's subscriptions, and the filters the router has.
pub struct Table {
    targets: RwLock<Vec<Arc<Target>>>,
    /// Topic filters subscribed on the router (`$share/<group>/` taken off), with the
    /// number of subscriptions of each.
    router: Mutex<HashMap<String, usize>>,
    /// Bumped on every change, so that publishers' caches start over.
    generation: AtomicU64,
    acl: Option<Arc<Acl>>,
    flow: Arc<Flow>,
    /// Messages dropped for subscribers whose mailbox was full.
    dropped: AtomicU64,
}

/// One session as a receiver on the front's route.
#[derive(Default)]
pub struct Target {
    level: u8,
    client_id: String,
    username: Option<String>,
    lag: Arc<Lag>,
    subs: Mutex<Vec<Sub>>,
    mail: Mutex<Mail>,
    ready: Notify,
}

struct Sub {
    filter: String,
    /// Granted QoS: 0, or 1 (clean sessions only, see the module doc).
    qos: u8,
    /// MQTT 5 "no local": not the session's own messages.
    no_local: bool,
    id: Option<u32>,
}

#[derive(Default)]
struct Mail {
    /// QoS 0 deliveries, as packets.
    bytes: Vec<u8>,
    count: u64,
    /// QoS 1 deliveries, waiting for a packet id (the client's window).
    qos1: VecDeque<(Arc<Owned>, Option<u32>)>,
    qos1_bytes: usize,
    /// A client is connected to take it (an offline session's mailbox is closed).
    open: bool,
    /// Packet ids of SUBSCRIBEs whose SUBACK is not out yet: nothing is taken meanwhile.
    held: Vec<u16>,
}

/// A publisher's memory of where a topic goes.
#[derive(Default)]
pub struct Routes {
    generation: u64,
    by_topic: HashMap<String, Route>,
}

struct Route {
    to: Vec<To>,
    router: bool,
}

/// One subscription a topic goes to.
struct To {
    target: Arc<Target>,
    qos: u8,
    id: Option<u32>,
    no_local: bool,
    /// The ACL lets its client read the topic (else it is only counted as delivered).
    readable: bool,
}

/// A message to deliver: topic, MQTT 5 properties (no topic alias; empty from a 3.1.1
/// publisher), payload, and the QoS it was published with.
pub struct Message<'a> {
    pub topic: &'a str,
    pub properties: &'a [u8],
    pub payload: &'a [u8],
    pub qos: u8,
}

/// A message held for QoS 1 deliveries (one copy for every subscriber).
struct Owned {
    topic: Box<str>,
    properties: Box<[u8]>,
    payload: Bytes,
}

impl Owned {
    /// Its share of a mailbox's bytes.
    fn size(&self) -> usize {
        self.topic.len() + self.properties.len() + self.payload.len() + 16
    }
}

impl Table {
    pub fn new(acl: Option<Arc<Acl>>, flow: Arc<Flow>) -> Table {
        Table {
            targets: RwLock::new(Vec::new()),
            router: Mutex::new(HashMap::new()),
            generation: AtomicU64::new(1),
            acl,
            flow,
            dropped: AtomicU64::new(0),
        }
    }

    fn changed(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// A new session (no subscriptions, mailbox open).
    pub fn join(
        &self,
        level: u8,
        client_id: &str,
        username: Option<&str>,
        lag: Arc<Lag>,
    ) -> Arc<Target> {
        let t = Arc::new(Target {
            level,
            client_id: client_id.to_string(),
            username: username.map(str::to_string),
            lag,
            subs: Mutex::new(Vec::new()),
            mail: Mutex::new(Mail {
                open: true,
                ..Mail::default()
            }),
            ready: Notify::new(),
        });
        if let Ok(mut targets) = self.targets.write() {
            targets.push(t.clone());
        }
        t
    }

    /// The session ended: it gets nothing more.
    pub fn leave(&self, t: &Arc<Target>) {
        if let Ok(mut targets) = self.targets.write() {
            targets.retain(|x| !Arc::ptr_eq(x, t));
        }
        t.close();
        self.changed();
    }

    /// `t` subscribes to `filter` at QoS `options & 3` (0 or 1; again: the QoS, options
    /// and identifier are replaced).
    pub fn subscribe(&self, t: &Target, filter: &str, options: u8, id: Option<u32>) {
        let sub = Sub {
            filter: filter.to_string(),
            qos: (options & 0x03).min(1),
            no_local: t.level == 5 && options & 0x04 != 0,
            id,
        };
        if let Ok(mut subs) = t.subs.lock() {
            match subs.iter_mut().find(|s| s.filter == filter) {
                Some(s) => *s = sub,
                None => subs.push(sub),
            }
        }
        self.changed();
    }

    /// `t` unsubscribes from `filter`; whether it was subscribed.
    pub fn unsubscribe(&self, t: &Target, filter: &str) -> bool {
        let Ok(mut subs) = t.subs.lock() else {
            return false;
        };
        let before = subs.len();
        subs.retain(|s| s.filter != filter);
        let had = subs.len() < before;
        drop(subs);
        if had {
            self.changed();
        }
        had
    }

    /// The router gets a subscription to `filter`.
    pub fn router_add(&self, filter: &str) {
        let key = router_key(filter);
        if let Ok(mut router) = self.router.lock() {
            *router.entry(key.to_string()).or_default() += 1;
        }
        self.changed();
    }

    /// A subscription of the router's to `filter` ended.
    pub fn router_remove(&self, filter: &str) {
        let key = router_key(filter);
        if let Ok(mut router) = self.router.lock() {
            if let Some(n) = router.get_mut(key) {
                *n -= 1;
                if *n == 0 {
                    router.remove(key);
                }
            }
        }
        self.changed();
    }

    fn lookup<'a>(&self, routes: &'a mut Routes, topic: &str) -> Option<&'a Route> {
        let generation = self.generation.load(Ordering::SeqCst);
        if routes.generation != generation || routes.by_topic.len() >= ROUTES_KEPT {
            routes.by_topic.clear();
            routes.generation = generation;
        }
        if !routes.by_topic.contains_key(topic) {
            let route = self.route(topic);
            routes.by_topic.insert(topic.to_string(), route);
        }
        routes.by_topic.get(topic)
    }

    /// Who gets `topic`: every matching subscription (once per subscription, as the
    /// router delivers), if the ACL lets its client read the topic.
    fn route(&self, topic: &str) -> Route {
        let mut to = Vec::new();
        if let Ok(targets) = self.targets.read() {
            for t in targets.iter() {
                let Ok(subs) = t.subs.lock() else { continue };
                let matching: Vec<_> = subs
                    .iter()
                    .filter(|s| topic::matches(&s.filter, topic))
                    .map(|s| (s.qos, s.id, s.no_local))
                    .collect();
                drop(subs);
                if matching.is_empty() {
                    continue;
                }
                let readable = self.acl.as_ref().is_none_or(|acl| {
                    let client = Client {
                        username: t.username.as_deref(),
                        client_id: &t.client_id,
                    };
                    acl.allows(client, topic, Access::Read)
                });
                to.extend(matching.into_iter().map(|(qos, id, no_local)| To {
                    target: t.clone(),
                    qos,
                    id,
                    no_local,
                    readable,
                }));
            }
        }
        let router = self
            .router
            .lock()
            .is_ok_and(|r| r.keys().any(|f| topic::matches(f, topic)));
        Route { to, router }
    }

    /// Deliver `m` to the front's subscriptions that match it (`from`: the publishing
    /// session, for "no local"). True when the router has a subscription that matches
    /// it too.
    pub fn publish(&self, routes: &mut Routes, from: Option<&Target>, m: &Message<'_>) -> bool {
        let Some(route) = self.lookup(routes, m.topic) else {
            return true;
        };
        // One copy for all QoS 1 deliveries of this message, made when the first needs it.
        let mut owned = None;
        for to in &route.to {
            let t = &to.target;
            let own = from.is_some_and(|f| std::ptr::eq(f, &**t));
            let qos = to.qos.min(m.qos);
            let pushed = to.readable
                && !(to.no_local && own)
                && match qos {
                    0 => t.push(m, to.id),
                    _ => {
                        let o = owned.get_or_insert_with(|| {
                            Arc::new(Owned {
                                topic: m.topic.into(),
                                properties: m.properties.into(),
                                payload: Bytes::copy_from_slice(m.payload),
                            })
                        });
                        t.push_qos1(o, to.id)
                    }
                };
            if pushed {
                continue;
            }
            // Not delivered: not behind by it either (but not moving: a subscriber that
            // stopped reading stays stalled, see flow::STALL).
            self.flow.skipped(&t.lag, 1);
            if to.readable && !own && t.is_open() {
                let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if n.is_power_of_two() {
                    let level = if qos > 0 {
                        log::Level::Error
                    } else {
                        log::Level::Warn
                    };
                    log::log!(
                        level,
                        "broker: client {:?} is not reading: {n} message(s) dropped so far, the last at QoS {qos} on {:?} (its mailbox of {} KiB was full)",
                        t.client_id,
                        m.topic,
                        MAILBOX_BYTES / 1024
                    );
                }
            }
        }
        route.router
    }
}

/// `$share/<group>/<filter>` → `<filter>`.
fn router_key(filter: &str) -> &str {
    filter
        .strip_prefix("$share/")
        .and_then(|rest| rest.split_once('/'))
        .map_or(filter, |(_, f)| f)
}

impl Target {
    fn is_open(&self) -> bool {
        self.mail.lock().is_ok_and(|m| m.open)
    }

    /// Append `m` as a PUBLISH to the mailbox; false when it is closed or full.
    fn push(&self, m: &Message<'_>, id: Option<u32>) -> bool {
        let Ok(mut mail) = self.mail.lock() else {
            return false;
        };
        if !mail.open || mail.bytes.len() + mail.qos1_bytes >= MAILBOX_BYTES {
            return false;
        }
        let was_empty = mail.bytes.is_empty();
        let props = if self.level == 5 { m.properties } else { &[] };
        p::put_publish(
            &mut mail.bytes,
            self.level,
            m.topic,
            0,
            0,
            false,
            props,
            id,
            m.payload,
        );
        mail.count += 1;
        drop(mail);
        if was_empty {
            self.ready.notify_one();
        }
        true
    }

    /// Queue `m` for a QoS 1 delivery; false when the mailbox is closed or full.
    fn push_qos1(&self, m: &Arc<Owned>, id: Option<u32>) -> bool {
        let Ok(mut mail) = self.mail.lock() else {
            return false;
        };
        if !mail.open || mail.bytes.len() + mail.qos1_bytes >= MAILBOX_BYTES {
            return false;
        }
        let was_empty = mail.bytes.is_empty() && mail.qos1.is_empty();
        mail.qos1_bytes += m.size();
        mail.qos1.push_back((m.clone(), id));
        drop(mail);
        if was_empty {
            self.ready.notify_one();
        }
        true
    }

    /// Take nothing until [`Target::release`] of `pkid` (a SUBSCRIBE's packet id).
    pub fn hold(&self, pkid: u16) {
        if let Ok(mut mail) = self.mail.lock() {
            if !mail.held.contains(&pkid) {
                mail.held.push(pkid);
            }
        }
    }

    /// The SUBACK for `pkid` is out: what came meanwhile may go (once no other
    /// SUBSCRIBE holds the mailbox).
    pub fn release(&self, pkid: u16) {
        let Ok(mut mail) = self.mail.lock() else {
            return;
        };
        let before = mail.held.len();
        mail.held.retain(|&id| id != pkid);
        let waiting = !mail.bytes.is_empty() || !mail.qos1.is_empty();
        let freed = mail.held.is_empty() && before > 0;
        drop(mail);
        if freed && waiting {
            self.ready.notify_one();
        }
    }

    /// A client is connected again: deliveries resume.
    pub fn open(&self) {
        if let Ok(mut mail) = self.mail.lock() {
            mail.open = true;
        }
    }

    /// The client is gone: what it did not take is dropped, and so is what comes.
    pub fn close(&self) {
        if let Ok(mut mail) = self.mail.lock() {
            mail.open = false;
            mail.bytes = Vec::new();
            mail.count = 0;
            mail.qos1 = VecDeque::new();
            mail.qos1_bytes = 0;
            mail.held.clear();
        }
    }

    /// Wait until the mailbox has something (returns at once if it got something since
    /// the last [`Target::take`]).
    pub async fn ready(&self) {
        self.ready.notified().await;
    }

    /// Move the mailbox's packets into `into` (emptied first): every QoS 0 delivery,
    /// and as many QoS 1 deliveries as `pkid` gives packet ids for. How many there are,
    /// and whether QoS 1 deliveries are left waiting for packet ids.
    pub fn take(&self, into: &mut Vec<u8>, mut pkid: impl FnMut() -> Option<u16>) -> (u64, bool) {
        into.clear();
        if into.capacity() > SPARE_KEPT {
            *into = Vec::new();
        }
        let Ok(mut mail) = self.mail.lock() else {
            return (0, false);
        };
        if !mail.held.is_empty() {
            return (0, false);
        }
        std::mem::swap(&mut mail.bytes, into);
        let mut n = std::mem::take(&mut mail.count);
        while !mail.qos1.is_empty() {
            let Some(id) = pkid() else {
                return (n, true);
            };
            let Some((m, sub_id)) = mail.qos1.pop_front() else {
                break;
            };
            mail.qos1_bytes -= m.size();
            let props = if self.level == 5 {
                &m.properties[..]
            } else {
                &[]
            };
            p::put_publish(
                into, self.level, &m.topic, 1, id, false, props, sub_id, &m.payload,
            );
            n += 1;
        }
        (n, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packets(level: u8, bytes: &[u8]) -> Vec<(String, Vec<u8>, Option<u32>)> {
        publishes(level, bytes)
            .into_iter()
            .map(|(t, p, id, _, _)| (t, p, id))
            .collect()
    }

    /// Topic, payload, subscription id, QoS, packet id of each PUBLISH.
    #[allow(clippy::type_complexity)]
    fn publishes(level: u8, mut bytes: &[u8]) -> Vec<(String, Vec<u8>, Option<u32>, u8, u16)> {
        let mut out = Vec::new();
        while let Ok(p::Framing::Packet(f)) = p::frame(bytes, p::MAX_REMAINING) {
            let publish = p::parse_publish(&bytes[..f.len], &f, level).expect("publish");
            let id = if level == 5 {
                p::subscription_id(publish.properties).expect("properties")
            } else {
                None
            };
            out.push((
                publish.topic.to_string(),
                publish.payload.to_vec(),
                id,
                publish.qos,
                publish.pkid,
            ));
            bytes = &bytes[f.len..];
        }
        assert!(bytes.is_empty(), "a partial packet left");
        out
    }

    fn msg<'a>(topic: &'a str, payload: &'a [u8]) -> Message<'a> {
        Message {
            topic,
            properties: &[],
            payload,
            qos: 0,
        }
    }

    #[test]
    fn subscriptions_get_matching_messages_once_each_and_the_router_only_its_own() {
        let flow = Arc::new(Flow::new(1 << 20));
        let table = Table::new(None, flow.clone());
        let a = table.join(4, "a", None, flow.join());
        let b = table.join(5, "b", None, flow.join());
        let mut routes = Routes::default();
        table.subscribe(&a, "s/#", 0, None);
        table.subscribe(&a, "s/+", 0, None);
        table.subscribe(&b, "s/1", 0, Some(7));
        assert!(!table.publish(&mut routes, None, &msg("s/1", b"x")));
        assert!(!table.publish(&mut routes, None, &msg("t/1", b"y")));
        table.router_add("$share/g/t/#");
        assert!(table.publish(&mut routes, None, &msg("t/1", b"z")));
        let mut got = Vec::new();
        assert_eq!(a.take(&mut got, || None).0, 2);
        assert_eq!(
            packets(4, &got),
            vec![("s/1".into(), b"x".to_vec(), None); 2]
        );
        assert_eq!(b.take(&mut got, || None).0, 1);
        assert_eq!(
            packets(5, &got),
            vec![("s/1".into(), b"x".to_vec(), Some(7))]
        );
        table.router_remove("$share/g/t/#");
        assert!(!table.publish(&mut routes, None, &msg("t/1", b"z")));
        // Unsubscribed, left: nothing more.
        assert!(table.unsubscribe(&a, "s/+"));
        assert!(!table.unsubscribe(&a, "s/+"));
        table.leave(&b);
        table.publish(&mut routes, None, &msg("s/1", b"w"));
        assert_eq!(a.take(&mut got, || None).0, 1);
        assert_eq!(b.take(&mut got, || None).0, 0);
    }

    #[test]
    fn no_local_closed_and_full_mailboxes_drop_and_count_as_delivered() {
        let flow = Arc::new(Flow::new(1 << 30));
        let table = Table::new(None, flow.clone());
        let lag = flow.join();
        flow.set_filter(&lag, "s/#", true);
        let a = table.join(5, "a", None, lag.clone());
        table.subscribe(&a, "s/#", 0x04, None); // no local
        let mut routes = Routes::default();
        let mut flow_routes = crate::broker::flow::Routes::default();
        let other = flow.join();
        table.publish(&mut routes, Some(&a), &msg("s/1", b"own"));
        let mut got = Vec::new();
        assert_eq!(a.take(&mut got, || None).0, 0);
        // Offline: dropped, and publishers do not wait for it.
        a.close();
        let big = vec![0u8; 100_000];
        for _ in 0..30 {
            flow.route(&mut flow_routes, "s/1", big.len());
            table.publish(&mut routes, None, &msg("s/1", &big));
        }
        assert!(!flow.must_wait(&mut flow_routes, "s/1", &other));
        a.open();
        // Full after MAILBOX_BYTES: the rest is dropped, and counted as not behind.
        for _ in 0..30 {
            flow.route(&mut flow_routes, "s/1", big.len());
            table.publish(&mut routes, None, &msg("s/1", &big));
        }
        let n = a.take(&mut got, || None).0;
        let one = p::publish(5, "s/1", 0, 0, false, &[], None, &big).len();
        assert_eq!(n as usize, MAILBOX_BYTES.div_ceil(one));
        assert_eq!(packets(5, &got).len() as u64, n);
        flow.delivered(&lag, n);
        assert!(!flow.must_wait(&mut flow_routes, "s/1", &other));
    }

    #[test]
    fn the_acl_decides_who_reads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("acl");
        std::fs::write(&path, "user alice\ntopic read s/#\n").expect("acl");
        let acl = Arc::new(Acl::load(&path).expect("acl"));
        let flow = Arc::new(Flow::new(1 << 20));
        let table = Table::new(Some(acl), flow.clone());
        let alice = table.join(4, "a", Some("alice"), flow.join());
        let bob = table.join(4, "b", Some("bob"), flow.join());
        table.subscribe(&alice, "#", 0, None);
        table.subscribe(&bob, "#", 0, None);
        let mut routes = Routes::default();
        table.publish(&mut routes, None, &msg("s/1", b"x"));
        table.publish(&mut routes, None, &msg("t/1", b"x"));
        let mut got = Vec::new();
        assert_eq!(alice.take(&mut got, || None).0, 1);
        assert_eq!(bob.take(&mut got, || None).0, 0);
    }

    #[test]
    fn qos_1_deliveries_wait_for_packet_ids_and_a_qos_0_subscription_gets_qos_0() {
        let flow = Arc::new(Flow::new(1 << 20));
        let table = Table::new(None, flow.clone());
        let one = table.join(5, "one", None, flow.join());
        let zero = table.join(4, "zero", None, flow.join());
        table.subscribe(&one, "q/#", 1, Some(3));
        table.subscribe(&zero, "q/#", 0, None);
        let mut routes = Routes::default();
        for (i, qos) in [(0, 1), (1, 1), (2, 0), (3, 1)] {
            let payload = [b'0' + i];
            let m = Message {
                qos,
                ..msg("q/1", &payload)
            };
            assert!(!table.publish(&mut routes, None, &m));
        }
        // Two packet ids free: the QoS 0 message and two QoS 1 ones go, one waits.
        let mut ids = vec![102u16, 101];
        let mut got = Vec::new();
        assert_eq!(one.take(&mut got, || ids.pop()), (3, true));
        let got = publishes(5, &got);
        let seen: Vec<_> = got
            .iter()
            .map(|(_, p, id, q, pk)| (p[0], *id, *q, *pk))
            .collect();
        assert_eq!(
            seen,
            [
                (b'2', Some(3), 0, 0),
                (b'0', Some(3), 1, 101),
                (b'1', Some(3), 1, 102)
            ]
        );
        let mut rest = Vec::new();
        assert_eq!(one.take(&mut rest, || Some(103)), (1, false));
        assert_eq!(publishes(5, &rest)[0].4, 103);
        // The QoS 0 subscription gets all four at QoS 0.
        let mut z = Vec::new();
        assert_eq!(zero.take(&mut z, || None), (4, false));
        assert!(publishes(4, &z).iter().all(|m| m.3 == 0));
    }

    #[test]
    fn a_held_mailbox_gives_nothing_until_every_subscribe_is_answered() {
        let flow = Arc::new(Flow::new(1 << 20));
        let table = Table::new(None, flow.clone());
        let t = table.join(4, "h", None, flow.join());
        t.hold(1);
        t.hold(2);
        table.subscribe(&t, "h/#", 0, None);
        let mut routes = Routes::default();
        table.publish(&mut routes, None, &msg("h/1", b"x"));
        let mut got = Vec::new();
        assert_eq!(t.take(&mut got, || None), (0, false));
        t.release(1);
        assert_eq!(t.take(&mut got, || None), (0, false));
        t.release(2);
        assert_eq!(t.take(&mut got, || None), (1, false));
        // An unknown packet id releases nothing it did not hold.
        t.release(9);
        table.publish(&mut routes, None, &msg("h/1", b"y"));
        assert_eq!(t.take(&mut got, || None), (1, false));
    }
}
