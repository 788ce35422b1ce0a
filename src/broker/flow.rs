//! Flow control: publishers wait for a subscriber that is behind, instead of rumqttd
//! dropping what that subscriber has not read yet.
//!
//! rumqttd 0.20 keeps each subscribed filter's messages in a log of
//! `SEGMENT_SIZE × SEGMENT_COUNT` bytes and has no back-pressure: a subscriber further
//! behind than that skips what was overwritten — QoS 1 included, though each publisher
//! got its PUBACK. The front sees every client's PUBLISH (and the daemon's own pass
//! [`Flow::route`] too), and every delivery to a client (rumqttd's, and its own from
//! [`super::direct`], whose mailboxes are bounded too), so it counts per subscriber what
//! was routed to its subscriptions and what it received.
//! When a subscriber is behind by about half a log, the publishers whose messages go to
//! it stop being read until it catches up — TCP slows them, as mosquitto does.
//!
//! A subscriber that receives nothing for [`STALL`] while behind (its client stopped
//! reading) no longer holds anyone back: it may then lose messages, as it would with
//! mosquitto's `max_queued_messages`. QoS 0 subscriptions count too: they lost
//! messages in every flat-out benchmark without it, and the log could not be made
//! smaller (memory) without losing more.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::topic;

/// A subscriber that got nothing for this long while behind stops holding publishers.
pub const STALL: Duration = Duration::from_secs(2);
/// What rumqttd keeps per message besides topic and payload (indexes, packet fields),
/// for the byte estimate of a subscriber's lag.
const PER_MESSAGE: u64 = 64;

/// One subscriber's subscriptions and counters.
#[derive(Default)]
pub struct Lag {
    filters: RwLock<Vec<String>>,
    /// Messages routed to its filters (once per matching filter, as rumqttd delivers),
    /// and their bytes (topic + payload + [`PER_MESSAGE`]).
    routed: AtomicU64,
    routed_bytes: AtomicU64,
    /// Deliveries rumqttd made to it.
    delivered: AtomicU64,
    /// When `delivered` last moved (ms since the flow's start).
    moved_ms: AtomicU64,
}

/// The broker's subscribers, for flow control.
pub struct Flow {
    subscribers: RwLock<Vec<Arc<Lag>>>,
    /// Bumped on every change of the subscriber set or of a subscriber's filters, so
    /// that publishers' caches of who gets a topic start over.
    generation: AtomicU64,
    /// Subscribers with at least one counted filter (0: nothing to do).
    active: AtomicUsize,
    /// Publishers waiting for some subscriber.
    waiting: AtomicUsize,
    moved: Notify,
    start: Instant,
    /// How far behind (estimated bytes) a subscriber may get.
    limit: u64,
}

/// A publisher's memory of which subscribers get a topic.
#[derive(Default)]
pub struct Routes {
    generation: u64,
    by_topic: HashMap<String, Vec<Arc<Lag>>>,
}

/// Topics a publisher remembers before its cache starts over.
const ROUTES_KEPT: usize = 4096;

impl Flow {
    /// `limit`: how far behind, in bytes of rumqttd's log, a subscriber may get.
    pub fn new(limit: u64) -> Flow {
        Flow {
            subscribers: RwLock::new(Vec::new()),
            generation: AtomicU64::new(1),
            active: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            moved: Notify::new(),
            start: Instant::now(),
            limit,
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether any subscriber is counted at all.
    pub fn active(&self) -> bool {
        self.active.load(Ordering::Relaxed) > 0
    }

    /// A new subscriber (no filters yet).
    pub fn join(&self) -> Arc<Lag> {
        let lag = Arc::new(Lag::default());
        lag.moved_ms.store(self.now_ms(), Ordering::Relaxed);
        if let Ok(mut subs) = self.subscribers.write() {
            subs.push(lag.clone());
        }
        lag
    }

    /// The subscriber is gone: nobody waits for it any more.
    pub fn leave(&self, lag: &Arc<Lag>) {
        if let Ok(mut subs) = self.subscribers.write() {
            subs.retain(|l| !Arc::ptr_eq(l, lag));
        }
        if lag.filters.read().is_ok_and(|f| !f.is_empty()) {
            self.active.fetch_sub(1, Ordering::Relaxed);
        }
        self.generation.fetch_add(1, Ordering::Relaxed);
        self.moved.notify_waiters();
    }

    /// `lag` subscribed to `filter` (`true`) or unsubscribed (`false`).
    pub fn set_filter(&self, lag: &Lag, filter: &str, counted: bool) {
        let Ok(mut filters) = lag.filters.write() else {
            return;
        };
        let before = !filters.is_empty();
        let has = filters.iter().any(|f| f == filter);
        if counted && !has {
            filters.push(filter.to_string());
        } else if !counted && has {
            filters.retain(|f| f != filter);
        } else {
            return;
        }
        match (before, !filters.is_empty()) {
            (false, true) => {
                self.active.fetch_add(1, Ordering::Relaxed);
            }
            (true, false) => {
                self.active.fetch_sub(1, Ordering::Relaxed);
            }
            _ => {}
        }
        self.generation.fetch_add(1, Ordering::Relaxed);
    }

    /// The subscribers that get `topic`, once per matching filter.
    fn lookup<'a>(&self, routes: &'a mut Routes, topic: &str) -> &'a [Arc<Lag>] {
        let generation = self.generation.load(Ordering::Relaxed);
        if routes.generation != generation || routes.by_topic.len() >= ROUTES_KEPT {
            routes.by_topic.clear();
            routes.generation = generation;
        }
        if !routes.by_topic.contains_key(topic) {
            let mut found = Vec::new();
            if let Ok(subs) = self.subscribers.read() {
                for lag in subs.iter() {
                    if let Ok(filters) = lag.filters.read() {
                        let n = filters.iter().filter(|f| topic::matches(f, topic)).count();
                        found.extend(std::iter::repeat_n(lag.clone(), n));
                    }
                }
            }
            routes.by_topic.insert(topic.to_string(), found);
        }
        routes.by_topic.get(topic).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Whether a message on `topic` must wait: some subscriber that gets it is too far
    /// behind, and still receiving. A publisher never waits for itself (its own
    /// acknowledgements may be queued behind the message that waits).
    pub fn must_wait(&self, routes: &mut Routes, topic: &str, publisher: &Lag) -> bool {
        let now = self.now_ms();
        let stall = u64::try_from(STALL.as_millis()).unwrap_or(u64::MAX);
        self.lookup(routes, topic).iter().any(|lag| {
            if std::ptr::eq(&**lag, publisher) {
                return false;
            }
            let routed = lag.routed.load(Ordering::Relaxed);
            let behind = routed.saturating_sub(lag.delivered.load(Ordering::Relaxed));
            if behind == 0 {
                return false;
            }
            let per = lag.routed_bytes.load(Ordering::Relaxed) / routed.max(1);
            behind.saturating_mul(per) > self.limit
                && now.saturating_sub(lag.moved_ms.load(Ordering::Relaxed)) < stall
        })
    }

    /// A message on `topic` of `bytes` (topic + payload) goes to rumqttd.
    pub fn route(&self, routes: &mut Routes, topic: &str, bytes: usize) {
        let bytes = bytes as u64 + PER_MESSAGE;
        for lag in self.lookup(routes, topic) {
            lag.routed.fetch_add(1, Ordering::Relaxed);
            lag.routed_bytes.fetch_add(bytes, Ordering::Relaxed);
        }
    }

    /// `lag`'s client received `n` deliveries.
    pub fn delivered(&self, lag: &Lag, n: u64) {
        if n == 0 {
            return;
        }
        lag.delivered.fetch_add(n, Ordering::Relaxed);
        lag.moved_ms.store(self.now_ms(), Ordering::Relaxed);
        if self.waiting.load(Ordering::Relaxed) > 0 {
            self.moved.notify_waiters();
        }
    }

    /// `n` messages routed to `lag` were not delivered (dropped, or not for it after
    /// all): it is not behind by them, but it did not move either.
    pub fn skipped(&self, lag: &Lag, n: u64) {
        lag.delivered.fetch_add(n, Ordering::Relaxed);
    }

    /// Wait until some subscriber moved (or `limit` passed: a stalled subscriber does
    /// not move, and then stops counting).
    pub async fn wait(&self, limit: Duration) {
        self.waiting.fetch_add(1, Ordering::Relaxed);
        let _ = tokio::time::timeout(limit, self.moved.notified()).await;
        self.waiting.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_publisher_waits_for_a_subscriber_far_behind_until_it_reads() {
        let flow = Flow::new(1000);
        let mut routes = Routes::default();
        let other = Lag::default();
        assert!(!flow.active());
        let sub = flow.join();
        flow.set_filter(&sub, "a/#", true);
        assert!(flow.active());
        // 936 + 64 = 1000 bytes a message: one message behind is at the limit.
        flow.route(&mut routes, "a/1", 936);
        assert!(!flow.must_wait(&mut routes, "a/1", &other));
        flow.route(&mut routes, "a/1", 936);
        assert!(flow.must_wait(&mut routes, "a/1", &other));
        // Other topics are not held back.
        assert!(!flow.must_wait(&mut routes, "b/1", &other));
        // Not for itself.
        assert!(!flow.must_wait(&mut routes, "a/1", &sub));
        flow.delivered(&sub, 1);
        assert!(!flow.must_wait(&mut routes, "a/1", &other));
        // Not subscribed (any more): not counted.
        flow.set_filter(&sub, "a/#", false);
        assert!(!flow.active());
        flow.route(&mut routes, "a/1", 5000);
        assert!(!flow.must_wait(&mut routes, "a/1", &other));
        flow.leave(&sub);
    }

    #[test]
    fn overlapping_filters_count_twice_and_a_stalled_subscriber_stops_counting() {
        let flow = Flow {
            start: Instant::now() - Duration::from_secs(60),
            ..Flow::new(100)
        };
        let mut routes = Routes::default();
        let other = Lag::default();
        let sub = flow.join();
        flow.set_filter(&sub, "a/#", true);
        flow.set_filter(&sub, "a/+", true);
        flow.route(&mut routes, "a/1", 0);
        assert_eq!(sub.routed.load(Ordering::Relaxed), 2);
        flow.route(&mut routes, "a/1", 0);
        assert!(flow.must_wait(&mut routes, "a/1", &other));
        // Nothing delivered for longer than STALL.
        let long_ago = flow.now_ms() - STALL.as_millis() as u64 - 1;
        sub.moved_ms.store(long_ago, Ordering::Relaxed);
        assert!(!flow.must_wait(&mut routes, "a/1", &other));
        flow.leave(&sub);
        assert!(!flow.must_wait(&mut routes, "a/1", &other));
    }
}
