//! QoS 0 subscriptions, routed by the front itself.
//!
//! Through rumqttd's router a message costs three thread wake-ups: the task reading the
//! publisher, the router's own thread, the task writing to the subscriber (mosquitto's
//! single loop wakes once), and at a steady 5 000 msgs/s that was 1.8–2× mosquitto's
//! CPU per message, almost all of it in the kernel's task switching. A QoS 0
//! subscription needs nothing the router does (no packet ids, no acknowledgements, no
//! offline queue), so the front keeps those in this table instead of the router's: the
//! publisher's task appends each message to the subscriber's mailbox, and the task
//! writing to the subscriber takes the whole mailbox at once.
//!
//! A message goes to the router as well only when the router has a subscription that
//! matches it (QoS 1 and 2 subscriptions, `$share` groups, the daemon's own links): the
//! table counts those filters too. A QoS 1 or 2 PUBLISH always goes to the router (it
//! answers the publisher).
//!
//! Delivery order per publisher is kept. Flow control ([`super::flow`]) counts these
//! deliveries like the router's: a publisher waits for a subscriber that is behind. A
//! mailbox holds at most [`MAILBOX_BYTES`]; what a subscriber that stopped reading (and
//! so stopped holding publishers, see [`super::flow::STALL`]) does not take is dropped,
//! as QoS 0 allows, and counted in the log. An offline persistent session gets no QoS 0
//! messages (as with mosquitto).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

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

/// The front's QoS 0 subscriptions, and the filters the router has.
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

/// One session as a receiver of QoS 0 subscriptions.
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
    /// MQTT 5 "no local": not the session's own messages.
    no_local: bool,
    id: Option<u32>,
}

#[derive(Default)]
struct Mail {
    bytes: Vec<u8>,
    count: u64,
    /// A client is connected to take it (an offline session's mailbox is closed).
    open: bool,
}

/// A publisher's memory of where a topic goes.
#[derive(Default)]
pub struct Routes {
    generation: u64,
    by_topic: HashMap<String, Route>,
}

struct Route {
    to: Vec<(Arc<Target>, Option<u32>, bool)>,
    router: bool,
}

/// A message to deliver: topic, MQTT 5 properties (no topic alias; empty from a 3.1.1
/// publisher) and payload.
pub struct Message<'a> {
    pub topic: &'a str,
    pub properties: &'a [u8],
    pub payload: &'a [u8],
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

    /// `t` subscribes to `filter` at QoS 0 (again: the options and identifier are
    /// replaced).
    pub fn subscribe(&self, t: &Target, filter: &str, options: u8, id: Option<u32>) {
        let sub = Sub {
            filter: filter.to_string(),
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
                    .map(|s| (s.id, s.no_local))
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
                if !readable {
                    continue;
                }
                to.extend(matching.into_iter().map(|(id, nl)| (t.clone(), id, nl)));
            }
        }
        let router = self
            .router
            .lock()
            .is_ok_and(|r| r.keys().any(|f| topic::matches(f, topic)));
        Route { to, router }
    }

    /// Deliver `m` to the QoS 0 subscriptions that match it (`from`: the publishing
    /// session, for "no local"). True when the router has a subscription that matches
    /// it too.
    pub fn publish(&self, routes: &mut Routes, from: Option<&Target>, m: &Message<'_>) -> bool {
        let Some(route) = self.lookup(routes, m.topic) else {
            return true;
        };
        for (t, id, no_local) in &route.to {
            let own = from.is_some_and(|f| std::ptr::eq(f, &**t));
            if (*no_local && own) || !t.push(m, *id) {
                // Not delivered: not behind either.
                self.flow.delivered(&t.lag, 1);
                if !own && t.is_open() {
                    let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                    if n.is_power_of_two() {
                        log::warn!(
                            "broker: client {:?} is not reading: {n} QoS 0 message(s) dropped so far (its mailbox of {} KiB was full)",
                            t.client_id,
                            MAILBOX_BYTES / 1024
                        );
                    }
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
        if !mail.open || mail.bytes.len() >= MAILBOX_BYTES {
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
        }
    }

    /// Wait until the mailbox has something (returns at once if it got something since
    /// the last [`Target::take`]).
    pub async fn ready(&self) {
        self.ready.notified().await;
    }

    /// Move the mailbox's packets into `into` (empty), returning how many there are.
    pub fn take(&self, into: &mut Vec<u8>) -> u64 {
        into.clear();
        if into.capacity() > SPARE_KEPT {
            *into = Vec::new();
        }
        let Ok(mut mail) = self.mail.lock() else {
            return 0;
        };
        std::mem::swap(&mut mail.bytes, into);
        std::mem::take(&mut mail.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packets(level: u8, mut bytes: &[u8]) -> Vec<(String, Vec<u8>, Option<u32>)> {
        let mut out = Vec::new();
        while let Ok(p::Framing::Packet(f)) = p::frame(bytes, p::MAX_REMAINING) {
            let publish = p::parse_publish(&bytes[..f.len], &f, level).expect("publish");
            let id = if level == 5 {
                p::subscription_id(publish.properties).expect("properties")
            } else {
                None
            };
            out.push((publish.topic.to_string(), publish.payload.to_vec(), id));
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
        assert_eq!(a.take(&mut got), 2);
        assert_eq!(
            packets(4, &got),
            vec![("s/1".into(), b"x".to_vec(), None); 2]
        );
        assert_eq!(b.take(&mut got), 1);
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
        assert_eq!(a.take(&mut got), 1);
        assert_eq!(b.take(&mut got), 0);
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
        assert_eq!(a.take(&mut got), 0);
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
        let n = a.take(&mut got);
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
        assert_eq!(alice.take(&mut got), 1);
        assert_eq!(bob.take(&mut got), 0);
    }
}
