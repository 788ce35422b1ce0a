//! The store-and-forward outbox: messages bound upstream, in SQLite (sqlx, bundled
//! SQLite, WAL, `synchronous = NORMAL`), oldest first.
//!
//! One task owns the database connection ([`Outbox`] is its handle), so the byte and
//! drop counters it keeps in memory always agree with the file. Appends are group
//! committed: every append waiting when a transaction starts goes into it, so the rate
//! holds on an SD card while a lone reading still commits at once.
//!
//! Limits: `max_bytes` (then `on_full` decides: drop the oldest rows or refuse the new
//! ones) and `max_age` (older rows are dropped). Every dropped message is counted in
//! the file (`buffer stats` shows it) and logged as ERROR once per burst: it is data lost.
//! A database that cannot be opened or fails its check is moved aside and a new one
//! started (ERROR in the log); the daemon keeps running.
//!
//! `durability = "offline"`: while the uplink is up (the session says so with
//! [`Outbox::set_uplink`]) new messages are kept in memory, with ids from the same
//! sequence, and peeked and acknowledged like rows; when the uplink goes down, when more
//! than [`MEMORY_MAX_ROWS`] wait, and at close, they are written to the file. A SIGKILL
//! while the uplink is up loses what was in memory: that is the trade.

mod store;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, oneshot, watch};

use crate::config::{BufferConfig, Durability, OnFull};
pub use store::Stats;
use store::Store;

/// The file in `state_dir`.
pub const FILE_NAME: &str = "buffer.db";
/// Appends taken into one transaction at most.
const MAX_GROUP: usize = 10_000;
/// `durability = "offline"`: messages kept in memory at most, before they go to disk.
pub const MEMORY_MAX_ROWS: usize = 10_000;
/// How often rows past `max_age` are dropped and the totals re-read.
const PRUNE_EVERY: Duration = Duration::from_secs(30);
/// At most one ERROR line per burst of drops of this length.
const DROP_LOG_EVERY: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum BufferError {
    #[error("buffer database {path}: {source}")]
    Db { path: PathBuf, source: sqlx::Error },
    #[error("buffer database {path}: {source}")]
    Migrate {
        path: PathBuf,
        source: sqlx::migrate::MigrateError,
    },
    #[error("buffer database {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the buffer has stopped")]
    Closed,
}

/// A message to keep until the upstream acknowledges it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage {
    /// The remote topic.
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: u8,
    pub retain: bool,
}

/// A stored message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub id: i64,
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: u8,
    pub retain: bool,
}

/// What happened to an append.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Appended {
    /// Committed rows.
    pub stored: usize,
    /// New messages refused (`on_full = "reject_new"`, or larger than `max_bytes`).
    pub rejected: usize,
    /// Old rows dropped to make room (`on_full = "drop_oldest"`).
    pub dropped_oldest: usize,
}

enum Op {
    Append(
        Vec<NewMessage>,
        oneshot::Sender<Result<Appended, BufferError>>,
    ),
    Peek {
        after: i64,
        up_to: Option<i64>,
        limit: i64,
        reply: oneshot::Sender<Result<Vec<Row>, BufferError>>,
    },
    Ack(Vec<i64>, oneshot::Sender<Result<(), BufferError>>),
    MaxId(oneshot::Sender<Result<i64, BufferError>>),
    Stats(oneshot::Sender<Result<Stats, BufferError>>),
    Uplink(bool),
    Close(oneshot::Sender<()>),
}

/// Handle to the outbox task; cheap to clone.
#[derive(Clone)]
pub struct Outbox {
    ops: mpsc::Sender<Op>,
    /// The id of the newest committed row: the drain waits on it.
    appended: watch::Receiver<i64>,
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Outbox {
    /// Open (or create) `<state_dir>/buffer.db` and start the task that owns it.
    pub async fn open(state_dir: &Path, cfg: &BufferConfig) -> Result<Outbox, BufferError> {
        let path = state_dir.join(FILE_NAME);
        let store = Store::open_or_replace(&path).await?;
        let (ops, rx) = mpsc::channel(1024);
        let (tx_appended, appended) = watch::channel(0);
        let mut task = Task {
            store,
            rx,
            appended: tx_appended,
            max_bytes: cfg.max_bytes,
            max_age: cfg.max_age,
            on_full: cfg.on_full,
            drops: DropLog::default(),
            keep_in_memory: cfg.durability == Durability::Offline,
            uplink_up: false,
            memory: BTreeMap::new(),
            next_id: 1,
        };
        task.prune().await;
        let max = task.store.max_id().await.unwrap_or(0);
        task.next_id = max + 1;
        let _ = task.appended.send(max);
        tokio::spawn(task.run());
        Ok(Outbox { ops, appended })
    }

    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, BufferError>>) -> Op,
    ) -> Result<T, BufferError> {
        let (tx, rx) = oneshot::channel();
        self.ops
            .send(make(tx))
            .await
            .map_err(|_| BufferError::Closed)?;
        rx.await.map_err(|_| BufferError::Closed)?
    }

    /// Store messages; returns once they are committed (or refused by the limits).
    pub async fn append(&self, messages: Vec<NewMessage>) -> Result<Appended, BufferError> {
        if messages.is_empty() {
            return Ok(Appended::default());
        }
        self.call(|tx| Op::Append(messages, tx)).await
    }

    /// Up to `limit` rows with `after < id <= up_to`, oldest first.
    pub async fn peek(
        &self,
        after: i64,
        up_to: Option<i64>,
        limit: usize,
    ) -> Result<Vec<Row>, BufferError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.call(|reply| Op::Peek {
            after,
            up_to,
            limit,
            reply,
        })
        .await
    }

    /// Delete rows the upstream acknowledged.
    pub async fn ack(&self, ids: Vec<i64>) -> Result<(), BufferError> {
        if ids.is_empty() {
            return Ok(());
        }
        self.call(|tx| Op::Ack(ids, tx)).await
    }

    /// Like `ack`, without waiting for the delete: the outbox task takes requests in
    /// order, so a later `peek` or `close` sees the rows gone; a failed delete is logged
    /// there (the rows stay and are sent again).
    pub async fn ack_later(&self, ids: Vec<i64>) -> Result<(), BufferError> {
        if ids.is_empty() {
            return Ok(());
        }
        let (tx, _) = oneshot::channel();
        self.ops
            .send(Op::Ack(ids, tx))
            .await
            .map_err(|_| BufferError::Closed)
    }

    /// The newest row's id (0 when empty and new).
    pub async fn max_id(&self) -> Result<i64, BufferError> {
        self.call(Op::MaxId).await
    }

    pub async fn stats(&self) -> Result<Stats, BufferError> {
        self.call(Op::Stats).await
    }

    /// The uplink came up (`true`) or went down. With `durability = "offline"` this
    /// decides whether new messages wait in memory or on disk; going down writes what
    /// is in memory to disk.
    pub async fn set_uplink(&self, up: bool) {
        let _ = self.ops.send(Op::Uplink(up)).await;
    }

    /// A receiver that changes whenever rows are committed.
    pub fn appended(&self) -> watch::Receiver<i64> {
        self.appended.clone()
    }

    /// Finish what is queued and close the database cleanly.
    pub async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self.ops.send(Op::Close(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

/// Drops are logged as ERROR at most once a minute, with what accumulated since.
#[derive(Default)]
struct DropLog {
    last: Option<std::time::Instant>,
    full: u64,
    rejected: u64,
    expired: u64,
}

impl DropLog {
    fn add(&mut self, full: u64, rejected: u64, expired: u64) {
        self.full += full;
        self.rejected += rejected;
        self.expired += expired;
        self.maybe_log(false);
    }

    fn maybe_log(&mut self, force: bool) {
        if self.full + self.rejected + self.expired == 0 {
            return;
        }
        let due = self.last.is_none_or(|t| t.elapsed() >= DROP_LOG_EVERY);
        if due || force {
            log::error!(
                "buffer: messages bound upstream were dropped: {} oldest to make room \
                 (buffer.max_bytes), {} new ones refused (buffer.on_full = \"reject_new\" \
                 or larger than buffer.max_bytes), {} older than buffer.max_age",
                self.full,
                self.rejected,
                self.expired
            );
            self.last = Some(std::time::Instant::now());
            self.full = 0;
            self.rejected = 0;
            self.expired = 0;
        }
    }
}

struct Task {
    store: Store,
    rx: mpsc::Receiver<Op>,
    appended: watch::Sender<i64>,
    max_bytes: u64,
    max_age: Duration,
    on_full: OnFull,
    drops: DropLog,
    /// `durability = "offline"`.
    keep_in_memory: bool,
    uplink_up: bool,
    /// Messages kept in memory by id, with their creation time.
    memory: BTreeMap<i64, (NewMessage, i64)>,
    /// The id the next message gets (memory and file share one sequence).
    next_id: i64,
}

impl Task {
    async fn run(mut self) {
        let mut prune = tokio::time::interval(PRUNE_EVERY);
        prune.tick().await;
        let mut later: Vec<Op> = Vec::new();
        loop {
            let op = match later.pop() {
                Some(op) => op,
                None => tokio::select! {
                    op = self.rx.recv() => match op {
                        Some(op) => op,
                        None => break,
                    },
                    _ = prune.tick() => {
                        self.prune().await;
                        self.drops.maybe_log(false);
                        continue;
                    }
                },
            };
            match op {
                Op::Append(first, reply) => {
                    // Group commit: everything already waiting joins this transaction.
                    let mut group = vec![(first, reply)];
                    let mut n = group[0].0.len();
                    while n < MAX_GROUP {
                        match self.rx.try_recv() {
                            Ok(Op::Append(m, r)) => {
                                n += m.len();
                                group.push((m, r));
                            }
                            Ok(other) => {
                                later.insert(0, other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    if self.keep_in_memory && self.uplink_up {
                        self.keep(group);
                        if self.memory.len() > MEMORY_MAX_ROWS {
                            self.spill().await;
                        }
                    } else {
                        self.append_group(group).await;
                    }
                }
                Op::Peek {
                    after,
                    up_to,
                    limit,
                    reply,
                } => {
                    let _ = reply.send(self.peek(after, up_to, limit).await);
                }
                Op::Ack(mut ids, reply) => {
                    if !self.memory.is_empty() {
                        ids.retain(|id| self.memory.remove(id).is_none());
                    }
                    let r = if ids.is_empty() {
                        Ok(())
                    } else {
                        self.store.delete(&ids).await
                    };
                    if let Err(e) = &r {
                        if reply.is_closed() {
                            log::warn!("buffer: cannot delete acknowledged messages: {e}");
                        }
                    }
                    let _ = reply.send(r);
                }
                Op::MaxId(reply) => {
                    let r = self.store.max_id().await.map(|m| m.max(self.next_id - 1));
                    let _ = reply.send(r);
                }
                Op::Uplink(up) => {
                    self.uplink_up = up;
                    if !up {
                        self.spill().await;
                    }
                }
                Op::Stats(reply) => {
                    let _ = reply.send(self.store.stats().await);
                }
                Op::Close(reply) => {
                    self.spill().await;
                    self.drops.maybe_log(true);
                    self.store.close().await;
                    let _ = reply.send(());
                    return;
                }
            }
        }
        self.spill().await;
        self.drops.maybe_log(true);
        self.store.close().await;
    }

    /// Rows from the file and from memory with `after < id <= up_to`, oldest first.
    async fn peek(
        &mut self,
        after: i64,
        up_to: Option<i64>,
        limit: i64,
    ) -> Result<Vec<Row>, BufferError> {
        let mut rows = self.store.peek(after, up_to, limit).await?;
        if self.memory.is_empty() {
            return Ok(rows);
        }
        let hi = up_to.unwrap_or(i64::MAX);
        if after >= hi {
            return Ok(rows);
        }
        let n = usize::try_from(limit).unwrap_or(usize::MAX);
        rows.extend(
            self.memory
                .range(after + 1..=hi)
                .take(n)
                .map(|(id, (m, _))| Row {
                    id: *id,
                    topic: m.topic.clone(),
                    payload: m.payload.clone(),
                    qos: m.qos,
                    retain: m.retain,
                }),
        );
        rows.sort_by_key(|r| r.id);
        rows.truncate(n);
        Ok(rows)
    }

    /// Keep messages in memory (`durability = "offline"`, uplink up).
    fn keep(&mut self, group: Vec<(Vec<NewMessage>, Reply)>) {
        let now = now_ms();
        for (messages, reply) in group {
            let n = messages.len();
            for m in messages {
                self.memory.insert(self.next_id, (m, now));
                self.next_id += 1;
            }
            let _ = reply.send(Ok(Appended {
                stored: n,
                ..Appended::default()
            }));
        }
        let _ = self.appended.send(self.next_id - 1);
    }

    /// Write what is kept in memory to the file, with its ids and times.
    async fn spill(&mut self) {
        if self.memory.is_empty() {
            return;
        }
        let kept = std::mem::take(&mut self.memory);
        let n = kept.len();
        let ids: Vec<(i64, i64)> = kept.iter().map(|(id, (_, t))| (*id, *t)).collect();
        let messages: Vec<NewMessage> = kept.into_values().map(|(m, _)| m).collect();
        match self
            .store
            .append_kept(messages, &ids, self.max_bytes, self.on_full)
            .await
        {
            Ok(r) => {
                let rejected = r.stored_flags.iter().filter(|s| !**s).count();
                if r.dropped_oldest > 0 || rejected > 0 {
                    self.drops.add(r.dropped_oldest as u64, rejected as u64, 0);
                }
                log::debug!("buffer: {n} message(s) kept in memory written to disk");
            }
            Err(e) => log::error!(
                "buffer: {n} message(s) bound upstream are lost: cannot write them \
                 to disk: {e}"
            ),
        }
    }
}

type Reply = oneshot::Sender<Result<Appended, BufferError>>;

impl Task {
    async fn append_group(&mut self, group: Vec<(Vec<NewMessage>, Reply)>) {
        let now = now_ms();
        let mut results = Vec::with_capacity(group.len());
        let mut all: Vec<NewMessage> = Vec::new();
        for (messages, reply) in group {
            results.push((messages.len(), reply));
            all.extend(messages);
        }
        let outcome = self
            .store
            .append(all, now, self.max_bytes, self.on_full)
            .await;
        match outcome {
            Ok(per_message) => {
                let mut i = 0;
                let total_dropped = per_message.dropped_oldest;
                for (k, (n, reply)) in results.into_iter().enumerate() {
                    let stored = per_message.stored_flags[i..i + n]
                        .iter()
                        .filter(|s| **s)
                        .count();
                    i += n;
                    let _ = reply.send(Ok(Appended {
                        stored,
                        rejected: n - stored,
                        dropped_oldest: if k == 0 { total_dropped } else { 0 },
                    }));
                }
                let rejected = per_message.stored_flags.iter().filter(|s| !**s).count();
                if total_dropped > 0 || rejected > 0 {
                    self.drops.add(total_dropped as u64, rejected as u64, 0);
                }
                self.next_id = self.next_id.max(per_message.max_id + 1);
                let _ = self.appended.send(per_message.max_id);
            }
            Err(e) => {
                log::error!("buffer: cannot store messages bound upstream: {e}");
                let msg = e.to_string();
                for (_, reply) in results {
                    let _ = reply.send(Err(BufferError::Io {
                        path: self.store.path().to_path_buf(),
                        source: std::io::Error::other(msg.clone()),
                    }));
                }
            }
        }
    }

    async fn prune(&mut self) {
        let cutoff = now_ms() - i64::try_from(self.max_age.as_millis()).unwrap_or(i64::MAX);
        let before = self.memory.len();
        self.memory.retain(|_, (_, created)| *created >= cutoff);
        let expired = (before - self.memory.len()) as u64;
        if expired > 0 {
            self.drops.add(0, 0, expired);
        }
        match self.store.drop_older_than(cutoff).await {
            Ok(n) if n > 0 => self.drops.add(0, 0, n),
            Ok(_) => {}
            Err(e) => log::warn!("buffer: cannot drop expired messages: {e}"),
        }
    }
}

/// `sensorgate buffer stats`: the figures of the buffer in `state_dir`, live or stopped
/// daemon alike (WAL lets a reader in beside the writer). `None`: no buffer file yet.
pub async fn stats_of(state_dir: &Path) -> Result<Option<Stats>, BufferError> {
    let path = state_dir.join(FILE_NAME);
    if !path.exists() {
        return Ok(None);
    }
    let mut conn = store::connect_existing(&path).await?;
    store::stats(&mut conn, &path).await.map(Some)
}

/// `sensorgate buffer purge`: delete every stored message; returns how many.
pub async fn purge(state_dir: &Path) -> Result<u64, BufferError> {
    let path = state_dir.join(FILE_NAME);
    if !path.exists() {
        return Ok(0);
    }
    let mut conn = store::connect_existing(&path).await?;
    store::purge(&mut conn, &path).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(i: u32) -> NewMessage {
        NewMessage {
            topic: format!("t/{i}"),
            payload: i.to_string().into_bytes(),
            qos: 1,
            retain: false,
        }
    }

    fn ids(rows: &[Row]) -> Vec<i64> {
        rows.iter().map(|r| r.id).collect()
    }

    async fn on_disk(dir: &Path) -> i64 {
        stats_of(dir)
            .await
            .expect("stats")
            .map(|s| s.count)
            .unwrap_or(0)
    }

    async fn offline_outbox(dir: &Path) -> Outbox {
        let cfg = BufferConfig {
            durability: Durability::Offline,
            ..BufferConfig::default()
        };
        Outbox::open(dir, &cfg).await.expect("open")
    }

    #[tokio::test]
    async fn offline_durability_keeps_messages_in_memory_while_the_uplink_is_up() {
        let dir = tempfile::tempdir().expect("tempdir");
        let o = offline_outbox(dir.path()).await;
        // Down at first: to disk.
        o.append(vec![msg(1)]).await.expect("append");
        assert_eq!(on_disk(dir.path()).await, 1);

        o.set_uplink(true).await;
        let a = o
            .append(vec![msg(2), msg(3), msg(4)])
            .await
            .expect("append");
        assert_eq!(a.stored, 3);
        assert_eq!(
            on_disk(dir.path()).await,
            1,
            "nothing more written while up"
        );
        assert_eq!(*o.appended().borrow(), 4);
        assert_eq!(o.max_id().await.expect("max"), 4);
        let rows = o.peek(0, None, 10).await.expect("peek");
        assert_eq!(ids(&rows), [1, 2, 3, 4]);
        assert_eq!(rows[2].topic, "t/3");
        assert_eq!(ids(&o.peek(1, Some(3), 10).await.expect("peek")), [2, 3]);
        assert_eq!(ids(&o.peek(0, None, 2).await.expect("peek")), [1, 2]);

        // Acknowledged, from memory and from disk alike.
        o.ack(vec![1, 2]).await.expect("ack");
        assert_eq!(ids(&o.peek(0, None, 10).await.expect("peek")), [3, 4]);
        assert_eq!(on_disk(dir.path()).await, 0);

        // The uplink goes down: what is in memory goes to disk, same ids.
        o.set_uplink(false).await;
        assert_eq!(ids(&o.peek(0, None, 10).await.expect("peek")), [3, 4]);
        assert_eq!(on_disk(dir.path()).await, 2);
        o.append(vec![msg(5)]).await.expect("append");
        assert_eq!(ids(&o.peek(0, None, 10).await.expect("peek")), [3, 4, 5]);
        o.close().await;
    }

    #[tokio::test]
    async fn what_is_in_memory_is_written_at_close() {
        let dir = tempfile::tempdir().expect("tempdir");
        let o = offline_outbox(dir.path()).await;
        o.set_uplink(true).await;
        o.append(vec![msg(1), msg(2)]).await.expect("append");
        assert_eq!(on_disk(dir.path()).await, 0);
        o.close().await;
        assert_eq!(on_disk(dir.path()).await, 2);

        // Reopened: the ids go on after the ones written.
        let o = offline_outbox(dir.path()).await;
        o.set_uplink(true).await;
        o.append(vec![msg(3)]).await.expect("append");
        assert_eq!(ids(&o.peek(0, None, 10).await.expect("peek")), [1, 2, 3]);
        o.close().await;
    }

    #[tokio::test]
    async fn always_durability_writes_while_the_uplink_is_up() {
        let dir = tempfile::tempdir().expect("tempdir");
        let o = Outbox::open(dir.path(), &BufferConfig::default())
            .await
            .expect("open");
        o.set_uplink(true).await;
        o.append(vec![msg(1)]).await.expect("append");
        assert_eq!(on_disk(dir.path()).await, 1);
        o.close().await;
    }
}
