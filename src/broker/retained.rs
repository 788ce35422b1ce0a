//! Retained messages, kept by sensorgate rather than by rumqttd.
//!
//! rumqttd 0.20 hands a new subscriber at most one read batch of retained messages (100
//! for QoS 1: its fixed in-flight window; its QoS 0 batch otherwise) and drops the rest.
//! Home Assistant subscribes to wide filters at QoS 1 and expects every state, so the
//! broker keeps retained messages here instead: every PUBLISH with the retain flag, from
//! a client (through the front) or from the daemon, is stored here and passed on to
//! rumqttd without the flag (rumqttd then keeps nothing), and the front sends a new
//! subscription every matching message after its SUBACK.
//!
//! Like mosquitto with `persistence true`, the store outlives a restart: it is written to
//! `<state_dir>/retained.bin` at a clean stop and every [`AUTOSAVE`] when it changed
//! (a SIGKILL loses at most that much), and read back at start.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;

use crate::topic;

/// How often a changed store is written to its file.
pub const AUTOSAVE: Duration = Duration::from_secs(300);
/// The file's first bytes (format version 1).
const MAGIC: &[u8; 8] = b"SGRET01\n";

#[derive(Debug, thiserror::Error)]
pub enum RetainedError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a retained-message file of this version, or cut short")]
    Format { path: PathBuf },
}

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
    /// Changed since it was last saved.
    dirty: AtomicBool,
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
        self.dirty.store(true, Ordering::Relaxed);
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

impl RetainedStore {
    /// Write every message to `path` (through a temporary file and a rename, so a crash
    /// leaves the old file or the new one), unless nothing changed since the last save.
    /// Returns how many were written (None: nothing to do).
    pub fn save(&self, path: &Path) -> Result<Option<usize>, RetainedError> {
        if !self.dirty.swap(false, Ordering::Relaxed) {
            return Ok(None);
        }
        let mut out = Vec::with_capacity(4096);
        out.extend_from_slice(MAGIC);
        let n = {
            let Ok(map) = self.map.read() else {
                return Ok(None);
            };
            for (topic, m) in map.iter() {
                out.extend_from_slice(&(topic.len() as u32).to_le_bytes());
                out.extend_from_slice(topic.as_bytes());
                out.push(m.qos);
                out.extend_from_slice(&(m.properties.len() as u32).to_le_bytes());
                out.extend_from_slice(&m.properties);
                out.extend_from_slice(&(m.payload.len() as u32).to_le_bytes());
                out.extend_from_slice(&m.payload);
            }
            map.len()
        };
        let io = |source| RetainedError::Io {
            path: path.to_path_buf(),
            source,
        };
        let tmp = path.with_extension("bin.tmp");
        let written = std::fs::File::create(&tmp).and_then(|mut f| {
            f.write_all(&out)?;
            f.sync_all()
        });
        if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, path)) {
            self.dirty.store(true, Ordering::Relaxed);
            return Err(io(e));
        }
        Ok(Some(n))
    }

    /// The store saved at `path` (empty when there is no file).
    pub fn load(path: &Path) -> Result<RetainedStore, RetainedError> {
        let store = RetainedStore::default();
        let mut data = Vec::new();
        match std::fs::File::open(path) {
            Ok(mut f) => f
                .read_to_end(&mut data)
                .map_err(|source| RetainedError::Io {
                    path: path.to_path_buf(),
                    source,
                })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(store),
            Err(source) => {
                return Err(RetainedError::Io {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        let bad = || RetainedError::Format {
            path: path.to_path_buf(),
        };
        let mut rest = data.strip_prefix(&MAGIC[..]).ok_or_else(bad)?;
        fn take<'a>(rest: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
            let (a, b) = (rest.len() >= n).then(|| rest.split_at(n))?;
            *rest = b;
            Some(a)
        }
        fn len(rest: &mut &[u8]) -> Option<usize> {
            let b = take(rest, 4)?;
            usize::try_from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])).ok()
        }
        while !rest.is_empty() {
            let entry = (|| {
                let n = len(&mut rest)?;
                let topic = std::str::from_utf8(take(&mut rest, n)?).ok()?;
                let qos = *take(&mut rest, 1)?.first()?;
                let n = len(&mut rest)?;
                let properties = take(&mut rest, n)?;
                let n = len(&mut rest)?;
                let payload = take(&mut rest, n)?;
                Some((topic, qos, properties, payload))
            })();
            let (topic, qos, properties, payload) = entry.ok_or_else(bad)?;
            store.set(
                topic,
                Retained {
                    qos: qos.min(2),
                    properties: properties.into(),
                    payload: Bytes::copy_from_slice(payload),
                },
            );
        }
        store.dirty.store(false, Ordering::Relaxed);
        Ok(store)
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
    fn saved_and_loaded_back_only_when_changed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("retained.bin");
        assert_eq!(RetainedStore::load(&path).expect("no file").len(), 0);
        let s = RetainedStore::default();
        s.set("a/b", msg("1"));
        s.set(
            "c",
            Retained {
                qos: 0,
                properties: vec![0x03, 0, 1, b'j'].into(),
                payload: Bytes::from(vec![0u8, 255, 10]),
            },
        );
        assert_eq!(s.save(&path).expect("save"), Some(2));
        assert_eq!(s.save(&path).expect("save"), None);
        let back = RetainedStore::load(&path).expect("load");
        assert_eq!(back.len(), 2);
        assert_eq!(back.matching("a/b")[0].1.payload, "1");
        let c = back.matching("c");
        assert_eq!(*c[0].1, *s.matching("c")[0].1);
        assert_eq!(back.save(&path).expect("save"), None);

        let data = std::fs::read(&path).expect("read");
        std::fs::write(&path, &data[..data.len() - 1]).expect("write");
        let e = RetainedStore::load(&path).err().expect("cut short");
        assert!(e.to_string().contains("retained.bin"), "{e}");
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
