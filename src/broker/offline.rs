//! Persistent sessions, kept by the front: the registry of client ids whose session
//! outlives its connection, and the queue of messages an offline session collects.
//!
//! rumqttd 0.20 keeps an offline session's messages only in its per-filter commit log (a
//! subscriber further behind than the log silently misses the rest) and has neither a
//! count limit nor an age limit. So rumqttd only ever sees clean sessions: when a client
//! with a persistent session goes away, the front keeps its link to rumqttd's router
//! (the subscriptions stay), acknowledges what rumqttd delivers, and queues it here,
//! within `max_queued_messages` and `message_expiry`, until the client comes back.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::oneshot;

/// How long a new connection waits for the connection it takes over to hand its
/// session over.
const HANDOVER_TIMEOUT: Duration = Duration::from_secs(5);

/// A message on its way to a client that is (or was, when it was sent) not there.
#[derive(Debug, Clone)]
pub struct Queued {
    pub at: Instant,
    pub qos: u8,
    pub topic: Box<str>,
    /// MQTT 5 properties as rumqttd delivered them (no topic alias).
    pub properties: Box<[u8]>,
    pub payload: Bytes,
    /// Sent to the client before, unacknowledged (goes out again with DUP set).
    pub dup: bool,
}

/// An offline session's messages: oldest first, at most `max` (later ones are dropped,
/// as mosquitto does), none older than `expiry` (zero: no age limit).
#[derive(Debug)]
pub struct OfflineQueue {
    items: VecDeque<Queued>,
    max: usize,
    expiry: Duration,
    /// Messages dropped because the queue was full / because they expired.
    pub dropped: u64,
    pub expired: u64,
}

impl OfflineQueue {
    pub fn new(max: usize, expiry: Duration) -> OfflineQueue {
        OfflineQueue {
            items: VecDeque::new(),
            max,
            expiry,
            dropped: 0,
            expired: 0,
        }
    }

    fn prune(&mut self, now: Instant) {
        if self.expiry.is_zero() {
            return;
        }
        while self
            .items
            .front()
            .is_some_and(|q| now.duration_since(q.at) >= self.expiry)
        {
            self.items.pop_front();
            self.expired += 1;
        }
    }

    /// Queue `q` (after the expired ones made room), or count it as dropped.
    pub fn push(&mut self, q: Queued) {
        self.prune(Instant::now());
        if self.items.len() >= self.max {
            self.dropped += 1;
        } else {
            self.items.push_back(q);
        }
    }

    /// Put messages that were in flight when the client went away in front of the
    /// queue (they are older than anything queued since); the limit still holds.
    pub fn push_in_flight(&mut self, mut in_flight: Vec<Queued>) {
        let room = self.max.saturating_sub(self.items.len());
        if in_flight.len() > room {
            self.dropped += (in_flight.len() - room) as u64;
            in_flight.truncate(room);
        }
        for q in in_flight.into_iter().rev() {
            self.items.push_front(q);
        }
    }

    /// Everything still within its lifetime, oldest first.
    pub fn drain(&mut self) -> Vec<Queued> {
        self.prune(Instant::now());
        self.items.drain(..).collect()
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

/// Asks whoever holds a session (its connection, or its offline task) to hand it over.
pub type Claim<T> = oneshot::Sender<oneshot::Sender<T>>;

/// Client ids with a session the front keeps, each with the way to claim it.
pub struct Registry<T> {
    map: Mutex<HashMap<String, (u64, Claim<T>)>>,
    next: AtomicU64,
}

impl<T> Default for Registry<T> {
    fn default() -> Self {
        Registry {
            map: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
        }
    }
}

impl<T> Registry<T> {
    /// A number that tells this holder's registration from a later one's.
    pub fn generation(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    /// Register the holder of `id`'s session; returns its claim receiver.
    pub fn hold(&self, id: &str, generation: u64) -> oneshot::Receiver<oneshot::Sender<T>> {
        let (tx, rx) = oneshot::channel();
        if let Ok(mut map) = self.map.lock() {
            map.insert(id.to_string(), (generation, tx));
        }
        rx
    }

    /// The holder of `generation` is gone (unless a later one registered meanwhile).
    pub fn release(&self, id: &str, generation: u64) {
        if let Ok(mut map) = self.map.lock() {
            if map.get(id).is_some_and(|(g, _)| *g == generation) {
                map.remove(id);
            }
        }
    }

    /// Take `id`'s session from whoever holds it (a connection still open is closed).
    pub async fn claim(&self, id: &str) -> Option<T> {
        let (_, claim) = self.map.lock().ok()?.remove(id)?;
        let (tx, rx) = oneshot::channel();
        claim.send(tx).ok()?;
        tokio::time::timeout(HANDOVER_TIMEOUT, rx).await.ok()?.ok()
    }

    pub fn len(&self) -> usize {
        self.map.lock().map(|m| m.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(n: u8, at: Instant) -> Queued {
        Queued {
            at,
            qos: 1,
            topic: "t".into(),
            properties: Box::default(),
            payload: Bytes::from(vec![n]),
            dup: false,
        }
    }

    fn payloads(v: &[Queued]) -> Vec<u8> {
        v.iter().map(|q| q.payload[0]).collect()
    }

    #[test]
    fn keeps_the_oldest_up_to_the_limit_and_counts_the_rest() {
        let mut queue = OfflineQueue::new(3, Duration::ZERO);
        let now = Instant::now();
        for n in 0..5 {
            queue.push(q(n, now));
        }
        assert_eq!(queue.dropped, 2);
        queue.push_in_flight(vec![q(9, now)]);
        assert_eq!(queue.dropped, 3);
        assert_eq!(payloads(&queue.drain()), [0, 1, 2]);
        let mut queue = OfflineQueue::new(3, Duration::ZERO);
        queue.push(q(1, now));
        queue.push_in_flight(vec![q(7, now), q(8, now)]);
        assert_eq!(payloads(&queue.drain()), [7, 8, 1]);
    }

    #[test]
    fn expired_messages_go_and_make_room() {
        let mut queue = OfflineQueue::new(2, Duration::from_secs(60));
        let old = Instant::now() - Duration::from_secs(61);
        queue.push(q(0, old));
        queue.push(q(1, old));
        queue.push(q(2, Instant::now()));
        assert_eq!((queue.expired, queue.dropped), (2, 0));
        assert_eq!(payloads(&queue.drain()), [2]);
    }

    #[tokio::test]
    async fn a_claim_reaches_the_holder_and_a_stale_release_keeps_the_new_one() {
        let reg: Registry<u32> = Registry::default();
        let g1 = reg.generation();
        let rx = reg.hold("c", g1);
        tokio::spawn(async move {
            if let Ok(reply) = rx.await {
                let _ = reply.send(42);
            }
        });
        assert_eq!(reg.claim("c").await, Some(42));
        assert_eq!(reg.claim("c").await, None);
        let g2 = reg.generation();
        let _rx2 = reg.hold("c", g2);
        reg.release("c", g1);
        assert_eq!(reg.len(), 1);
        reg.release("c", g2);
        assert!(reg.is_empty());
    }
}
