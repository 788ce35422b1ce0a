//! The SQL behind the outbox. Only the outbox task calls this.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sqlx::{Connection, Row as _, SqliteConnection};

use super::{now_ms, BufferError, NewMessage, Row};
use crate::config::OnFull;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Rows per INSERT statement (5 parameters each; SQLite allows 32 766).
const ROWS_PER_INSERT: usize = 500;

/// What `buffer stats` shows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub count: i64,
    pub bytes: i64,
    /// `created_ms` of the oldest row.
    pub oldest_ms: Option<i64>,
    pub dropped_full: i64,
    pub dropped_rejected: i64,
    pub dropped_expired: i64,
}

pub struct AppendResult {
    /// One flag per message, in order: stored or refused.
    pub stored_flags: Vec<bool>,
    pub dropped_oldest: usize,
    pub max_id: i64,
}

pub struct Store {
    conn: SqliteConnection,
    path: PathBuf,
    /// Rows and bytes (topic + payload) in the table.
    count: i64,
    bytes: i64,
}

fn db_err(path: &Path) -> impl FnOnce(sqlx::Error) -> BufferError + '_ {
    move |source| BufferError::Db {
        path: path.to_path_buf(),
        source,
    }
}

/// Open a database file (created if missing) for the outbox.
pub async fn connect(path: &Path) -> Result<SqliteConnection, BufferError> {
    let opts = SqliteConnectOptions::from_str("sqlite://")
        .map_err(db_err(path))?
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(5));
    SqliteConnection::connect_with(&opts)
        .await
        .map_err(db_err(path))
}

async fn migrate(conn: &mut SqliteConnection, path: &Path) -> Result<(), BufferError> {
    MIGRATOR
        .run(conn)
        .await
        .map_err(|source| BufferError::Migrate {
            path: path.to_path_buf(),
            source,
        })
}

/// Connect to an existing outbox file, with its tables made current.
pub async fn connect_existing(path: &Path) -> Result<SqliteConnection, BufferError> {
    let mut conn = connect(path).await?;
    migrate(&mut conn, path).await?;
    Ok(conn)
}

impl Store {
    async fn open(path: &Path) -> Result<Store, BufferError> {
        let mut conn = connect(path).await?;
        let check: String = sqlx::query_scalar("PRAGMA quick_check")
            .fetch_one(&mut conn)
            .await
            .map_err(db_err(path))?;
        if check != "ok" {
            return Err(BufferError::Io {
                path: path.to_path_buf(),
                source: std::io::Error::other(format!("integrity check failed: {check}")),
            });
        }
        migrate(&mut conn, path).await?;
        let mut s = Store {
            conn,
            path: path.to_path_buf(),
            count: 0,
            bytes: 0,
        };
        s.recount().await?;
        Ok(s)
    }

    /// Open `path`; if it is not a usable database, move it aside (with its WAL files)
    /// as `<name>.corrupt-<unix time>`, say so as ERROR, and start a new one.
    pub async fn open_or_replace(path: &Path) -> Result<Store, BufferError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| BufferError::Io {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        match Store::open(path).await {
            Ok(s) => Ok(s),
            Err(e) => {
                let stamp = now_ms() / 1000;
                let aside = PathBuf::from(format!("{}.corrupt-{stamp}", path.display()));
                log::error!(
                    "buffer: {e}; moving it aside to {} and starting an empty buffer \
                     (messages in it are not sent)",
                    aside.display()
                );
                std::fs::rename(path, &aside).map_err(|source| BufferError::Io {
                    path: path.to_path_buf(),
                    source,
                })?;
                for ext in ["-wal", "-shm"] {
                    let side = PathBuf::from(format!("{}{ext}", path.display()));
                    if side.exists() {
                        let _ = std::fs::rename(&side, format!("{}{ext}", aside.display()));
                    }
                }
                Store::open(path).await
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn recount(&mut self) -> Result<(), BufferError> {
        let row = sqlx::query(
            "SELECT count(*), coalesce(sum(length(topic) + length(payload)), 0) FROM outbox",
        )
        .fetch_one(&mut self.conn)
        .await
        .map_err(db_err(&self.path))?;
        self.count = row.get(0);
        self.bytes = row.get(1);
        Ok(())
    }

    pub async fn append(
        &mut self,
        messages: Vec<NewMessage>,
        now: i64,
        max_bytes: u64,
        on_full: OnFull,
    ) -> Result<AppendResult, BufferError> {
        self.append_with(messages, None, now, max_bytes, on_full)
            .await
    }

    /// Like `append`, for rows that already have an id and a creation time (messages
    /// kept in memory, written out): `kept[i]` is `(id, created_ms)` of `messages[i]`.
    pub async fn append_kept(
        &mut self,
        messages: Vec<NewMessage>,
        kept: &[(i64, i64)],
        max_bytes: u64,
        on_full: OnFull,
    ) -> Result<AppendResult, BufferError> {
        self.append_with(messages, Some(kept), now_ms(), max_bytes, on_full)
            .await
    }

    async fn append_with(
        &mut self,
        messages: Vec<NewMessage>,
        kept: Option<&[(i64, i64)]>,
        now: i64,
        max_bytes: u64,
        on_full: OnFull,
    ) -> Result<AppendResult, BufferError> {
        let max = i64::try_from(max_bytes).unwrap_or(i64::MAX);
        let size = |m: &NewMessage| (m.topic.len() + m.payload.len()) as i64;
        let mut flags = Vec::with_capacity(messages.len());
        let mut incoming: i64 = 0;
        for m in &messages {
            let s = size(m);
            let fits =
                s <= max && (on_full == OnFull::DropOldest || self.bytes + incoming + s <= max);
            flags.push(fits);
            if fits {
                incoming += s;
            }
        }
        let path = self.path.clone();
        let mut tx = self.conn.begin().await.map_err(db_err(&path))?;
        let mut dropped = 0usize;
        let mut freed: i64 = 0;
        // drop_oldest: free the oldest rows until the new ones fit.
        let mut over = self.bytes + incoming - max;
        while over > 0 {
            let rows = sqlx::query(
                "SELECT id, length(topic) + length(payload) FROM outbox ORDER BY id LIMIT 1000",
            )
            .fetch_all(&mut *tx)
            .await
            .map_err(db_err(&path))?;
            if rows.is_empty() {
                break;
            }
            let mut last = 0i64;
            for r in &rows {
                if over <= 0 {
                    break;
                }
                last = r.get(0);
                let s: i64 = r.get(1);
                over -= s;
                freed += s;
                dropped += 1;
            }
            sqlx::query("DELETE FROM outbox WHERE id <= ?")
                .bind(last)
                .execute(&mut *tx)
                .await
                .map_err(db_err(&path))?;
        }
        // Many rows per INSERT: each statement is a round trip to sqlx's SQLite thread,
        // which costs more than SQLite's own work for a row.
        let fitting: Vec<(&NewMessage, Option<(i64, i64)>)> = messages
            .iter()
            .enumerate()
            .zip(&flags)
            .filter(|(_, fits)| **fits)
            .map(|((i, m), _)| (m, kept.and_then(|k| k.get(i).copied())))
            .collect();
        for chunk in fitting.chunks(ROWS_PER_INSERT) {
            let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new(if kept.is_some() {
                "INSERT INTO outbox (topic, payload, qos, retain, created_ms, id) "
            } else {
                "INSERT INTO outbox (topic, payload, qos, retain, created_ms) "
            });
            q.push_values(chunk, |mut row, (m, kept)| {
                row.push_bind(m.topic.as_str())
                    .push_bind(m.payload.as_slice())
                    .push_bind(i64::from(m.qos))
                    .push_bind(m.retain);
                match kept {
                    Some((id, created)) => {
                        row.push_bind(*created).push_bind(*id);
                    }
                    None => {
                        row.push_bind(now);
                    }
                }
            });
            q.build().execute(&mut *tx).await.map_err(db_err(&path))?;
        }
        let rejected = flags.iter().filter(|f| !**f).count() as i64;
        bump(&mut tx, "dropped_full", dropped as i64, &path).await?;
        bump(&mut tx, "dropped_rejected", rejected, &path).await?;
        let max_id: i64 = sqlx::query_scalar("SELECT coalesce(max(id), 0) FROM outbox")
            .fetch_one(&mut *tx)
            .await
            .map_err(db_err(&path))?;
        tx.commit().await.map_err(db_err(&path))?;
        let stored = flags.iter().filter(|f| **f).count() as i64;
        self.count += stored - dropped as i64;
        self.bytes += incoming - freed;
        Ok(AppendResult {
            stored_flags: flags,
            dropped_oldest: dropped,
            max_id,
        })
    }

    pub async fn peek(
        &mut self,
        after: i64,
        up_to: Option<i64>,
        limit: i64,
    ) -> Result<Vec<Row>, BufferError> {
        let rows = sqlx::query(
            "SELECT id, topic, payload, qos, retain FROM outbox WHERE id > ? AND id <= ? \
             ORDER BY id LIMIT ?",
        )
        .bind(after)
        .bind(up_to.unwrap_or(i64::MAX))
        .bind(limit)
        .fetch_all(&mut self.conn)
        .await
        .map_err(db_err(&self.path))?;
        Ok(rows
            .into_iter()
            .map(|r| Row {
                id: r.get(0),
                topic: r.get(1),
                payload: r.get(2),
                qos: u8::try_from(r.get::<i64, _>(3)).unwrap_or(1),
                retain: r.get(4),
            })
            .collect())
    }

    pub async fn delete(&mut self, ids: &[i64]) -> Result<(), BufferError> {
        let path = self.path.clone();
        // One statement for any number of ids: a JSON array, expanded by SQLite.
        let list = serde_json::to_string(ids).unwrap_or_else(|_| "[]".into());
        let mut tx = self.conn.begin().await.map_err(db_err(&path))?;
        let gone = sqlx::query(
            "SELECT count(*), coalesce(sum(length(topic) + length(payload)), 0) FROM outbox \
             WHERE id IN (SELECT value FROM json_each(?))",
        )
        .bind(&list)
        .fetch_one(&mut *tx)
        .await
        .map_err(db_err(&path))?;
        sqlx::query("DELETE FROM outbox WHERE id IN (SELECT value FROM json_each(?))")
            .bind(&list)
            .execute(&mut *tx)
            .await
            .map_err(db_err(&path))?;
        tx.commit().await.map_err(db_err(&path))?;
        self.count -= gone.get::<i64, _>(0);
        self.bytes -= gone.get::<i64, _>(1);
        Ok(())
    }

    /// Drop rows created before `cutoff_ms`; returns how many. Re-reads the totals too,
    /// so that a `buffer purge` from outside is noticed.
    pub async fn drop_older_than(&mut self, cutoff_ms: i64) -> Result<u64, BufferError> {
        let path = self.path.clone();
        let mut tx = self.conn.begin().await.map_err(db_err(&path))?;
        let n = sqlx::query("DELETE FROM outbox WHERE created_ms < ?")
            .bind(cutoff_ms)
            .execute(&mut *tx)
            .await
            .map_err(db_err(&path))?
            .rows_affected();
        bump(&mut tx, "dropped_expired", n as i64, &path).await?;
        tx.commit().await.map_err(db_err(&path))?;
        self.recount().await?;
        Ok(n)
    }

    pub async fn max_id(&mut self) -> Result<i64, BufferError> {
        // The AUTOINCREMENT sequence: ids are never reused, even after a purge.
        let seq: Option<i64> =
            sqlx::query_scalar("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'")
                .fetch_optional(&mut self.conn)
                .await
                .map_err(db_err(&self.path))?;
        Ok(seq.unwrap_or(0))
    }

    pub async fn stats(&mut self) -> Result<Stats, BufferError> {
        stats(&mut self.conn, &self.path).await
    }

    pub async fn close(self) {
        let _ = self.conn.close().await;
    }
}

async fn bump(
    conn: &mut SqliteConnection,
    name: &'static str,
    by: i64,
    path: &Path,
) -> Result<(), BufferError> {
    if by == 0 {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO counters (name, value) VALUES (?, ?) \
         ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
    )
    .bind(name)
    .bind(by)
    .execute(conn)
    .await
    .map_err(db_err(path))?;
    Ok(())
}

/// The figures `buffer stats` prints, read from any connection.
pub async fn stats(conn: &mut SqliteConnection, path: &Path) -> Result<Stats, BufferError> {
    let row = sqlx::query(
        "SELECT count(*), coalesce(sum(length(topic) + length(payload)), 0), min(created_ms) \
         FROM outbox",
    )
    .fetch_one(&mut *conn)
    .await
    .map_err(db_err(path))?;
    let counters = sqlx::query("SELECT name, value FROM counters")
        .fetch_all(&mut *conn)
        .await
        .map_err(db_err(path))?;
    let mut s = Stats {
        count: row.get(0),
        bytes: row.get(1),
        oldest_ms: row.get(2),
        ..Stats::default()
    };
    for c in counters {
        let name: String = c.get(0);
        let value: i64 = c.get(1);
        match name.as_str() {
            "dropped_full" => s.dropped_full = value,
            "dropped_rejected" => s.dropped_rejected = value,
            "dropped_expired" => s.dropped_expired = value,
            _ => {}
        }
    }
    Ok(s)
}

/// `buffer purge`: delete every stored message; returns how many.
pub async fn purge(conn: &mut SqliteConnection, path: &Path) -> Result<u64, BufferError> {
    let n = sqlx::query("DELETE FROM outbox")
        .execute(&mut *conn)
        .await
        .map_err(db_err(path))?
        .rows_affected();
    Ok(n)
}
