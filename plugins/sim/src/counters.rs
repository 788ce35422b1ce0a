//! Where the counters are across restarts: `counters.json` in the device's state folder,
//! a JSON object `{"point": last published value}`, replaced atomically after each poll
//! the daemon has taken over.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The state file's name inside the device's state folder.
pub const FILE_NAME: &str = "counters.json";
/// Written first, then renamed over [`FILE_NAME`], so the file is always whole.
const TMP_NAME: &str = ".counters.json.tmp";

/// The counters of one device: what has been published, and what the current poll adds.
#[derive(Debug, Default)]
pub struct Counters {
    /// The last value each counter published and the daemon took over. Holds the
    /// file's entries for points no longer configured too, so that a point taken out of
    /// the config and put back later still resumes.
    last: BTreeMap<String, i64>,
    /// Values handed out by the current poll, not yet taken over by the daemon: if they
    /// never are (the daemon stopped), the next run hands them out again.
    pending: Vec<(Arc<str>, i64)>,
    /// The file has been read (once, on the first poll).
    loaded: bool,
    /// The last write failed: warn once per run of failures, not every poll.
    write_failing: bool,
}

impl Counters {
    /// Read the state file, once. Missing: every counter starts at 0. Unreadable or not
    /// a JSON object of integers: a warning, and every counter starts at 0 (the next
    /// write replaces the file).
    pub async fn load(&mut self, device: &str, dir: &Path) {
        if self.loaded {
            return;
        }
        self.loaded = true;
        let path = dir.join(FILE_NAME);
        let bytes = match tokio::fs::read(&path).await {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                log::debug!(
                    "device {device}: no counter state in {} yet; counters start at 0",
                    path.display()
                );
                return;
            }
            Err(e) => {
                log::warn!(
                    "device {device}: cannot read counter state {}: {e}; counters start at 0",
                    path.display()
                );
                return;
            }
        };
        match serde_json::from_slice::<BTreeMap<String, i64>>(&bytes) {
            Ok(map) => {
                if let Some((point, v)) = map.iter().find(|(_, v)| **v < 0) {
                    log::warn!(
                        "device {device}: counter state {} is corrupt (point {point:?} has \
                         {v}); counters start at 0",
                        path.display()
                    );
                    return;
                }
                log::debug!(
                    "device {device}: counters resume from {}: {map:?}",
                    path.display()
                );
                self.last = map;
            }
            Err(e) => log::warn!(
                "device {device}: counter state {} is corrupt ({e}); counters start at 0",
                path.display()
            ),
        }
    }

    /// The value `point` publishes in this poll: one after the last one taken over.
    pub fn next(&mut self, point: &Arc<str>) -> i64 {
        let value = match self.last.get(&**point) {
            // i64::MAX polls is out of reach; wrap to 0 rather than panic anyway.
            Some(last) => last.checked_add(1).unwrap_or(0),
            None => 0,
        };
        self.pending.push((point.clone(), value));
        value
    }

    /// The daemon took this poll's values over: remember them and write the file. A
    /// failed write is logged, not returned: the values are out, counting goes on in
    /// memory, and only a restart would repeat them.
    pub async fn commit(&mut self, device: &str, dir: &Path) {
        if self.pending.is_empty() {
            return;
        }
        for (point, value) in self.pending.drain(..) {
            self.last.insert(point.to_string(), value);
        }
        let bytes = match serde_json::to_vec_pretty(&self.last) {
            Ok(mut bytes) => {
                bytes.push(b'\n');
                bytes
            }
            Err(e) => {
                // A map of strings to integers always serializes; this is only defensive.
                log::warn!("device {device}: cannot encode counter state: {e}");
                return;
            }
        };
        let dir: PathBuf = dir.to_path_buf();
        let path = dir.join(FILE_NAME);
        // write + fsync can take a while on an SD card: keep it off the runtime's threads.
        let result = tokio::task::spawn_blocking(move || write_atomic(&dir, &bytes))
            .await
            .unwrap_or_else(|e| Err(io::Error::other(e)));
        match result {
            Ok(()) => {
                if self.write_failing {
                    log::info!(
                        "device {device}: counter state {} is written again",
                        path.display()
                    );
                }
                self.write_failing = false;
            }
            Err(e) => {
                if !self.write_failing {
                    log::warn!(
                        "device {device}: cannot write counter state {}: {e}; counters go on, \
                         but a restart would repeat values",
                        path.display()
                    );
                }
                self.write_failing = true;
            }
        }
    }
}

/// Replace `dir/counters.json` with `bytes` so that a crash at any moment leaves either the
/// old file or the new one: write a temporary file beside it, sync it, rename it over.
fn write_atomic(dir: &Path, bytes: &[u8]) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    let tmp = dir.join(TMP_NAME);
    let written = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, dir.join(FILE_NAME))
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written?;
    // Make the rename itself durable. Not every platform can sync a folder: best effort.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_atomic_replaces_the_file_and_leaves_no_temp() {
        let dir = tempfile::tempdir().expect("temp dir");
        let sub = dir.path().join("devices").join("demo");
        write_atomic(&sub, b"{\"a\": 1}\n").expect("first write");
        write_atomic(&sub, b"{\"a\": 2}\n").expect("second write");
        let text = fs::read_to_string(sub.join(FILE_NAME)).expect("read back");
        assert_eq!(text, "{\"a\": 2}\n");
        assert!(!sub.join(TMP_NAME).exists());
    }

    #[tokio::test]
    async fn next_is_one_after_the_last_committed() {
        let dir = tempfile::tempdir().expect("temp dir");
        let p: Arc<str> = "c".into();
        let mut c = Counters::default();
        c.load("d", dir.path()).await;
        assert_eq!(c.next(&p), 0);
        c.commit("d", dir.path()).await;
        assert_eq!(c.next(&p), 1);
        // Not committed: handed out again.
        c.pending.clear();
        assert_eq!(c.next(&p), 1);
        c.commit("d", dir.path()).await;

        let mut again = Counters::default();
        again.load("d", dir.path()).await;
        assert_eq!(again.next(&p), 2);
    }

    #[tokio::test]
    async fn a_corrupt_file_means_start_at_zero() {
        let dir = tempfile::tempdir().expect("temp dir");
        let p: Arc<str> = "c".into();
        for junk in ["not json", "[1, 2]", "{\"c\": \"x\"}", "{\"c\": -4}"] {
            fs::write(dir.path().join(FILE_NAME), junk).expect("write junk");
            let mut c = Counters::default();
            c.load("d", dir.path()).await;
            assert_eq!(c.next(&p), 0, "after {junk:?}");
        }
    }
}
