//! Retained messages, kept by sensorgate rather than by rumqttd.
//!
//! rumqttd 0.20 hands a new subscriber at most one read batch of retained messages (100
//! for QoS 1: its fixed in-flight window; its QoS 0 batch otherwise) and drops the rest.
//! Home Assistant subscribes to wide filters at QoS 1 and expects every state, so the
//! broker keeps retained messages here instead: every PUBLISH with the retain flag, from
//! a client (through the front) or from the daemon, is stored here and passed on to
//! rumqttd without the flag (rumqttd then keeps nothing), and the front sends a new
//! subscription every matching message after its SUBACK.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use bytes::Bytes;

use crate::topic;

/// One retained message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retained {
    pub qos: u8,
    /// Its MQTT 5 properties, without topic alias and subscription identifier (empty
    /// when it came over 3.1.1 or from the daemon).
    pub properties: Box<[u8]>,
    pub payload: Bytes,
}

/// The retained message of every topic that has one.
#[derive(Default)]
pub struct RetainedStore {
    map: RwLock<HashMap<Box<str>, Arc<Retained>>>,
    /// Topics held (read without the lock: most SUBSCRIBEs meet an empty store in tests,
    /// and a client's publish path asks nothing of it).
    len: AtomicUsize,
}

impl RetainedStore {
    /// Keep `message` as `topic`'s retained message; an empty payload deletes it.
    pub fn set(&self, topic: &str, message: Retained) {
        if topic.is_empty() {
            return;
        }
        let Ok(mut map) = self.map.write() else {
            return;
        };
        if message.payload.is_empty() {
            map.remove(topic);
        } else if let Some(old) = map.get_mut(topic) {
            *old = Arc::new(message);
        } else {
            map.insert(topic.into(), Arc::new(message));
        }
        self.len.store(map.len(), Ordering::Relaxed);
    }

    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every retained message whose topic matches `filter`, by topic name. A shared
    /// subscription (`$share/…`) gets none (MQTT 5 §4.8.2).
    pub fn matching(&self, filter: &str) -> Vec<(Box<str>, Arc<Retained>)> {
        if self.is_empty() || filter.starts_with("$share/") {
            return Vec::new();
        }
        let Ok(map) = self.map.read() else {
            return Vec::new();
        };
        let mut found: Vec<_> = if topic::valid_filter(filter) && !filter.contains(['+', '#']) {
            map.get_key_value(filter)
                .map(|(t, m)| (t.clone(), m.clone()))
                .into_iter()
                .collect()
        } else {
            map.iter()
                .filter(|(t, _)| topic::matches(filter, t))
                .map(|(t, m)| (t.clone(), m.clone()))
                .collect()
        };
        found.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(payload: &'static str) -> Retained {
        Retained {
            qos: 1,
            properties: Box::default(),
            payload: Bytes::from_static(payload.as_bytes()),
        }
    }

    fn topics(found: &[(Box<str>, Arc<Retained>)]) -> Vec<&str> {
        found.iter().map(|(t, _)| &**t).collect()
    }

    #[test]
    fn set_replaces_and_an_empty_payload_deletes() {
        let s = RetainedStore::default();
        s.set("a/b", msg("1"));
        s.set("a/b", msg("2"));
        s.set("a/c", msg("3"));
        assert_eq!(s.len(), 2);
        let found = s.matching("a/b");
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].1.payload, "2");
        s.set("a/b", msg(""));
        assert_eq!(topics(&s.matching("a/#")), ["a/c"]);
        s.set("never/there", msg(""));
        s.set("", msg("x"));
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn wildcards_dollar_topics_and_shared_subscriptions() {
        let s = RetainedStore::default();
        for t in ["a/b", "a/b/c", "b", "$SYS/x", "a"] {
            s.set(t, msg("v"));
        }
        assert_eq!(topics(&s.matching("#")), ["a", "a/b", "a/b/c", "b"]);
        assert_eq!(topics(&s.matching("a/#")), ["a", "a/b", "a/b/c"]);
        assert_eq!(topics(&s.matching("+/b")), ["a/b"]);
        assert_eq!(topics(&s.matching("$SYS/#")), ["$SYS/x"]);
        assert!(s.matching("$share/g/#").is_empty());
        assert!(s.matching("nothing/here").is_empty());
    }
}
