//! The queue and the history in one SQLite file (WAL). A prompt is committed before
//! `POST /prompt` answers; taking, finishing and requeueing are single transactions, so after a
//! crash every prompt is either still queued (and runs again) or in history, never both.

use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Mutex, MutexGuard};

use rusqlite::{params, Connection, OptionalExtension};
use serde_json::{json, Value as Json};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the state database {path}: {source}")]
    Open { path: String, source: rusqlite::Error },
    #[error("the state database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("the state database holds a record that is not valid JSON: {0}")]
    Corrupt(#[from] serde_json::Error),
}

type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The queue's ordering key and what a queued prompt carries (ComfyUI's queue tuple).
#[derive(Clone, Debug)]
pub struct QueueItem {
    pub prompt_id: String,
    /// ComfyUI's `number`: lower runs first (negative for `front`).
    pub number: f64,
    /// `number` as the client sees it (an integer when the server chose it).
    pub number_json: Json,
    /// Beyond ComfyUI: higher runs first, before `number` is compared.
    pub priority: i64,
    /// The validated prompt (constants coerced), as the executor gets it.
    pub prompt: Json,
    /// `extra_data` with `client_id` and `create_time`, secrets removed.
    pub extra_data: Json,
    /// The output node ids to execute.
    pub outputs: Vec<String>,
    /// Secrets split out of `extra_data` (never echoed by any route).
    pub sensitive: Json,
    pub create_time: i64,
    /// How many times a server has started running it (2 after a crash mid-run).
    pub attempts: i64,
}

impl QueueItem {
    /// ComfyUI's queue entry: `[number, prompt_id, prompt, extra_data, outputs_to_execute]`.
    pub fn tuple(&self) -> Json {
        json!([self.number_json, self.prompt_id, self.prompt, self.extra_data, self.outputs])
    }

    pub fn client_id(&self) -> Option<&str> {
        self.extra_data.get("client_id").and_then(Json::as_str)
    }
}

/// How a finished prompt ended, as `/api/jobs` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Completed,
    Failed,
    Cancelled,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::Failed => "failed",
            Outcome::Cancelled => "cancelled",
        }
    }
}

/// A finished prompt: its history entry and the columns jobs are filtered and sorted by.
#[derive(Clone, Debug)]
pub struct Finished {
    pub prompt_id: String,
    pub outcome: Outcome,
    /// ComfyUI's history entry (`prompt`, `outputs`, `status`, `meta`).
    pub entry: Json,
    pub number: f64,
    pub create_time: i64,
    pub start_time: i64,
    pub end_time: i64,
}

/// What `enqueue` did with a prompt id.
#[derive(Clone, Debug, PartialEq)]
pub enum Enqueued {
    Added,
    /// The id was already queued or in history: nothing changed (resubmission is idempotent).
    Known { number: Json },
}

pub struct Store {
    conn: Mutex<Connection>,
    max_history: usize,
    /// The next server-chosen `number`. It moves for every submission, valid or not, without
    /// a write; `enqueue` persists it with the prompt, so a restart never reuses a number a
    /// queued prompt holds.
    next_number: AtomicI64,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS queue (
    prompt_id   TEXT PRIMARY KEY,
    number      REAL NOT NULL,
    number_json TEXT NOT NULL,
    priority    INTEGER NOT NULL DEFAULT 0,
    running     INTEGER NOT NULL DEFAULT 0,
    prompt      TEXT NOT NULL,
    extra_data  TEXT NOT NULL,
    outputs     TEXT NOT NULL,
    sensitive   TEXT NOT NULL,
    create_time INTEGER NOT NULL,
    start_time  INTEGER,
    attempts    INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS queue_order ON queue (running, priority DESC, number, prompt_id);
CREATE TABLE IF NOT EXISTS history (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    prompt_id   TEXT NOT NULL UNIQUE,
    outcome     TEXT NOT NULL,
    entry       TEXT NOT NULL,
    number      REAL NOT NULL,
    create_time INTEGER NOT NULL,
    start_time  INTEGER NOT NULL,
    end_time    INTEGER NOT NULL,
    -- extra_pnginfo.workflow.id, for `/api/jobs?workflow_id=`.
    workflow_id TEXT
);
-- Files workers uploaded for prompts whose outcome is not recorded yet (docs/scale-out.md,
-- Outputs): those of deliveries that lose are deleted when the outcome is recorded.
CREATE TABLE IF NOT EXISTS uploads (
    prompt_id TEXT NOT NULL,
    delivery  INTEGER NOT NULL,
    kind      TEXT NOT NULL,
    path      TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS uploads_prompt ON uploads (prompt_id);
";

/// Indices `/api/jobs` filters and sorts by; created after the columns they need exist.
const INDICES: &str = "
CREATE INDEX IF NOT EXISTS history_created ON history (create_time);
CREATE INDEX IF NOT EXISTS history_outcome ON history (outcome, create_time);
CREATE INDEX IF NOT EXISTS history_workflow ON history (workflow_id, create_time);
";

impl Store {
    /// Opens (creating if needed) the database. A prompt left running by a crash goes back to
    /// the queue; one that was already re-run once after a crash is recorded as failed instead,
    /// so a prompt that takes the server down cannot do so forever.
    pub fn open(path: &Path, max_history: usize) -> Result<Store> {
        let store = Self::open_as_is(path, max_history)?;
        store.recover()?;
        Ok(store)
    }

    /// Opens the database leaving prompts marked running as they are: with a broker they were
    /// handed to workers and may still run there (docs/scale-out.md, "Dispatch").
    pub fn open_as_is(path: &Path, max_history: usize) -> Result<Store> {
        let conn = Connection::open(path).map_err(|source| StoreError::Open { path: path.display().to_string(), source })?;
        // WAL: readers never wait for the writer. synchronous=NORMAL: a commit survives the
        // process being killed (the WAL is in the OS's hands), one fsync per checkpoint rather
        // than per prompt; `docs/server.md` says what a power loss can take.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.execute_batch(SCHEMA)?;
        add_workflow_id(&conn)?;
        conn.execute_batch(INDICES)?;
        // Every statement on the hot paths is prepared once per connection.
        conn.set_prepared_statement_cache_capacity(64);
        let number: Option<String> = conn.query_row("SELECT value FROM meta WHERE key = 'number'", [], |r| r.get(0)).optional()?;
        let next_number = AtomicI64::new(number.and_then(|s| s.parse().ok()).unwrap_or(0));
        Ok(Store { conn: Mutex::new(conn), max_history: max_history.max(1), next_number })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite inconsistent (transactions roll
        // back), so a poisoned lock is still usable.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn recover(&self) -> Result<()> {
        let stale: Vec<QueueItem> = {
            let conn = self.conn();
            let mut st = conn.prepare(&format!("SELECT {COLS} FROM queue WHERE running = 1"))?;
            let rows = st.query_map([], row_item)?.collect::<Result<Vec<_>, _>>()?;
            rows.into_iter().map(decode_item).collect::<Result<_>>()?
        };
        for item in stale {
            if item.attempts >= 2 {
                tracing::warn!("prompt {} was running when the server stopped, twice: recorded as failed", item.prompt_id);
                let now = crate::time::now_ms();
                let entry = json!({
                    "prompt": item.tuple(),
                    "outputs": {},
                    "status": {"status_str": "error", "completed": false, "messages": [
                        ["execution_error", {"prompt_id": item.prompt_id, "node_id": null, "node_type": null, "executed": [],
                          "exception_message": "the server stopped twice while running this prompt; it was not run again",
                          "exception_type": "comfyrs.ServerStopped", "traceback": [], "current_inputs": {}, "current_outputs": [],
                          "timestamp": now}]]},
                    "meta": {},
                });
                self.finish(
                    &Finished {
                    prompt_id: item.prompt_id.clone(),
                    outcome: Outcome::Failed,
                    entry,
                    number: item.number,
                    create_time: item.create_time,
                    start_time: now,
                    end_time: now,
                    },
                    false,
                )?;
            } else {
                tracing::info!("prompt {} was running when the server stopped: queued again", item.prompt_id);
                self.conn().execute("UPDATE queue SET running = 0 WHERE prompt_id = ?1", [&item.prompt_id])?;
            }
        }
        Ok(())
    }

    /// The next server-chosen `number` (ComfyUI counts every submission without one).
    pub fn next_number(&self) -> i64 {
        self.next_number.fetch_add(1, Ordering::Relaxed)
    }

    /// Adds a prompt unless its id is known; committed when this returns.
    pub fn enqueue(&self, item: &QueueItem) -> Result<Enqueued> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let queued: Option<String> =
            tx.prepare_cached("SELECT number_json FROM queue WHERE prompt_id = ?1")?.query_row([&item.prompt_id], |r| r.get(0)).optional()?;
        if let Some(n) = queued {
            return Ok(Enqueued::Known { number: serde_json::from_str(&n)? });
        }
        let done: Option<String> = tx
            .prepare_cached("SELECT json_quote(json_extract(entry, '$.prompt[0]')) FROM history WHERE prompt_id = ?1")?
            .query_row([&item.prompt_id], |r| r.get(0))
            .optional()?;
        if let Some(n) = done {
            return Ok(Enqueued::Known { number: serde_json::from_str(&n).unwrap_or(Json::Null) });
        }
        tx.prepare_cached(
            "INSERT INTO queue (prompt_id, number, number_json, priority, prompt, extra_data, outputs, sensitive, create_time)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )?
        .execute(params![
                item.prompt_id,
                item.number,
                item.number_json.to_string(),
                item.priority,
                item.prompt.to_string(),
                item.extra_data.to_string(),
                serde_json::to_string(&item.outputs)?,
                item.sensitive.to_string(),
            item.create_time,
        ])?;
        tx.prepare_cached("INSERT INTO meta (key, value) VALUES ('number', ?1) ON CONFLICT(key) DO UPDATE SET value = ?1")?
            .execute([self.next_number.load(Ordering::Relaxed).to_string()])?;
        tx.commit()?;
        Ok(Enqueued::Added)
    }

    /// Marks the first pending prompt running and returns it.
    pub fn take_next(&self) -> Result<Option<QueueItem>> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let item = take_in(&tx)?;
        tx.commit()?;
        Ok(item)
    }

    /// Puts a running prompt back (the server is stopping; it runs at the next start).
    pub fn requeue(&self, prompt_id: &str) -> Result<()> {
        self.conn().execute("UPDATE queue SET running = 0, attempts = max(attempts - 1, 0) WHERE prompt_id = ?1", [prompt_id])?;
        Ok(())
    }

    /// Records a finished prompt and removes it from the queue, in one transaction; trims the
    /// oldest history entries beyond the limit. With `take_next`, the same transaction also
    /// marks the next pending prompt running and returns it (one commit per prompt run instead
    /// of two).
    pub fn finish(&self, f: &Finished, take_next: bool) -> Result<Option<QueueItem>> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.prepare_cached(
            "INSERT INTO history (prompt_id, outcome, entry, number, create_time, start_time, end_time, workflow_id)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, json_extract(?3, '$.prompt[3].extra_pnginfo.workflow.id'))
             ON CONFLICT(prompt_id) DO UPDATE SET outcome = ?2, entry = ?3, number = ?4, create_time = ?5, start_time = ?6, end_time = ?7,
                 workflow_id = excluded.workflow_id",
        )?
        .execute(params![f.prompt_id, f.outcome.as_str(), f.entry.to_string(), f.number, f.create_time, f.start_time, f.end_time])?;
        tx.prepare_cached("DELETE FROM queue WHERE prompt_id = ?1")?.execute([&f.prompt_id])?;
        // By sequence number, not by count: O(log n) per prompt. Deleted entries leave gaps, so
        // at most `max_history` are kept.
        tx.prepare_cached("DELETE FROM history WHERE seq <= (SELECT max(seq) FROM history) - ?1")?.execute([self.max_history as i64])?;
        let next = if take_next { take_in(&tx)? } else { None };
        tx.commit()?;
        Ok(next)
    }

    /// Records the outcome a worker reports for a dispatched prompt (docs/scale-out.md, "The
    /// prompt stream"), once: true when this call recorded it; false when the prompt is not
    /// running here any more (an earlier delivery's outcome was recorded, or it was cancelled),
    /// and then nothing changes.
    pub fn record_once(&self, f: &Finished) -> Result<bool> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let removed = tx.prepare_cached("DELETE FROM queue WHERE prompt_id = ?1 AND running = 1")?.execute([&f.prompt_id])?;
        if removed == 0 {
            return Ok(false);
        }
        tx.prepare_cached(
            "INSERT INTO history (prompt_id, outcome, entry, number, create_time, start_time, end_time, workflow_id)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, json_extract(?3, '$.prompt[3].extra_pnginfo.workflow.id'))",
        )?
        .execute(params![f.prompt_id, f.outcome.as_str(), f.entry.to_string(), f.number, f.create_time, f.start_time, f.end_time])?;
        tx.prepare_cached("DELETE FROM history WHERE seq <= (SELECT max(seq) FROM history) - ?1")?.execute([self.max_history as i64])?;
        tx.commit()?;
        Ok(true)
    }

    /// Notes a file a worker uploaded for one delivery of a prompt (`kind`: output or temp;
    /// `path` relative to that folder).
    pub fn add_upload(&self, prompt_id: &str, delivery: i64, kind: &str, path: &str) -> Result<()> {
        self.conn()
            .prepare_cached("INSERT INTO uploads (prompt_id, delivery, kind, path) VALUES (?1, ?2, ?3, ?4)")?
            .execute(params![prompt_id, delivery, kind, path])?;
        Ok(())
    }

    /// After a worker's report for `delivery` of `prompt_id`: when it was `recorded`, the
    /// prompt's uploads are settled and those of every other delivery are returned; when it
    /// was not (an earlier delivery's outcome was), that delivery's are. The caller deletes
    /// the returned files (`(kind, path)`).
    pub fn settle_uploads(&self, prompt_id: &str, delivery: i64, recorded: bool) -> Result<Vec<(String, String)>> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let losers = {
            let sql = if recorded {
                "DELETE FROM uploads WHERE prompt_id = ?1 AND delivery != ?2 RETURNING kind, path"
            } else {
                "DELETE FROM uploads WHERE prompt_id = ?1 AND delivery = ?2 RETURNING kind, path"
            };
            let mut st = tx.prepare_cached(sql)?;
            let rows = st.query_map(params![prompt_id, delivery], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
            rows.collect::<std::result::Result<Vec<_>, _>>()?
        };
        if recorded {
            tx.prepare_cached("DELETE FROM uploads WHERE prompt_id = ?1")?.execute([prompt_id])?;
        }
        tx.commit()?;
        Ok(losers)
    }

    /// Running prompts (at most one per executor), then pending ones in the order they will run.
    pub fn queue(&self) -> Result<(Vec<QueueItem>, Vec<QueueItem>)> {
        let conn = self.conn();
        let mut st = conn.prepare(&format!("SELECT {COLS} FROM queue ORDER BY running DESC, priority DESC, number, prompt_id"))?;
        let rows = st.query_map([], row_item)?.collect::<Result<Vec<_>, _>>()?;
        let (mut running, mut pending) = (Vec::new(), Vec::new());
        for r in rows {
            let is_running = r.running;
            let item = decode_item(r)?;
            if is_running {
                running.push(item);
            } else {
                pending.push(item);
            }
        }
        Ok((running, pending))
    }

    /// Prompts queued or running.
    pub fn queue_len(&self) -> Result<usize> {
        Ok(self.conn().prepare_cached("SELECT count(*) FROM queue")?.query_row([], |r| r.get::<_, i64>(0))? as usize)
    }

    pub fn queued(&self, prompt_id: &str) -> Result<Option<QueueItem>> {
        let conn = self.conn();
        let row = conn.query_row(&format!("SELECT {COLS} FROM queue WHERE prompt_id = ?1"), [prompt_id], row_item).optional()?;
        row.map(decode_item).transpose()
    }

    /// Removes a prompt handed to the workers that none had claimed when it was cancelled
    /// (docs/scale-out.md, "Events and control"): it leaves the queue without a history entry,
    /// as a cancelled pending prompt does. The removed prompt, if it was still there.
    pub fn remove_dispatched(&self, prompt_id: &str) -> Result<Option<QueueItem>> {
        let Some(item) = self.queued(prompt_id)? else { return Ok(None) };
        let n = self.conn().execute("DELETE FROM queue WHERE prompt_id = ?1 AND running = 1", [prompt_id])?;
        Ok((n == 1).then_some(item))
    }

    /// Removes pending prompts (running ones are interrupted, not deleted); how many went.
    pub fn delete_pending(&self, ids: &[String]) -> Result<usize> {
        self.delete_each("DELETE FROM queue WHERE prompt_id = ?1 AND running = 0", ids)
    }

    /// Runs a one-id DELETE for each id in one transaction; how many rows went.
    fn delete_each(&self, sql: &str, ids: &[String]) -> Result<usize> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let mut n = 0;
        {
            let mut st = tx.prepare_cached(sql)?;
            for id in ids {
                n += st.execute([id])?;
            }
        }
        tx.commit()?;
        Ok(n)
    }

    pub fn clear_pending(&self) -> Result<usize> {
        Ok(self.conn().execute("DELETE FROM queue WHERE running = 0", [])?)
    }

    /// History entries in insertion order: with an offset, skip that many oldest and take at
    /// most `max_items`; without, the newest `max_items` (ComfyUI's windowing).
    pub fn history(&self, max_items: Option<usize>, offset: Option<usize>) -> Result<Vec<(String, Json)>> {
        let conn = self.conn();
        let total: i64 = conn.query_row("SELECT count(*) FROM history", [], |r| r.get(0))?;
        let (skip, take) = match (max_items, offset) {
            (max, Some(off)) => (off as i64, max.map(|m| m as i64).unwrap_or(-1)),
            (Some(max), None) => ((total - max as i64).max(0), max as i64),
            (None, None) => (0, -1),
        };
        let mut st = conn.prepare("SELECT prompt_id, entry FROM history ORDER BY seq LIMIT ?1 OFFSET ?2")?;
        let rows = st.query_map(params![take, skip], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, entry) = row?;
            out.push((id, serde_json::from_str(&entry)?));
        }
        Ok(out)
    }

    pub fn history_entry(&self, prompt_id: &str) -> Result<Option<Json>> {
        let conn = self.conn();
        let e: Option<String> = conn.query_row("SELECT entry FROM history WHERE prompt_id = ?1", [prompt_id], |r| r.get(0)).optional()?;
        Ok(e.map(|e| serde_json::from_str(&e)).transpose()?)
    }

    pub fn delete_history(&self, ids: &[String]) -> Result<usize> {
        self.delete_each("DELETE FROM history WHERE prompt_id = ?1", ids)
    }

    pub fn clear_history(&self) -> Result<usize> {
        Ok(self.conn().execute("DELETE FROM history", [])?)
    }

    pub fn history_len(&self) -> Result<usize> {
        Ok(self.conn().query_row("SELECT count(*) FROM history", [], |r| r.get::<_, i64>(0))? as usize)
    }

    /// A persisted flag (the queue's pause).
    pub fn flag(&self, key: &str) -> Result<bool> {
        let conn = self.conn();
        let v: Option<String> = conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0)).optional()?;
        Ok(v.as_deref() == Some("1"))
    }

    pub fn set_flag(&self, key: &str, on: bool) -> Result<()> {
        self.conn().execute(
            "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = ?2",
            params![key, if on { "1" } else { "0" }],
        )?;
        Ok(())
    }

    /// Runs `f` with the connection, for queries that live with their routes (jobs).
    pub fn with_conn<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        f(&self.conn())
    }
}

/// Marks the first pending prompt running (its attempt counted) and returns it.
fn take_in(tx: &rusqlite::Transaction) -> Result<Option<QueueItem>> {
    let row = tx
        .prepare_cached(&format!("SELECT {COLS} FROM queue WHERE running = 0 ORDER BY priority DESC, number, prompt_id LIMIT 1"))?
        .query_row([], row_item)
        .optional()?;
    let Some(row) = row else { return Ok(None) };
    let mut item = decode_item(row)?;
    item.attempts += 1;
    tx.prepare_cached("UPDATE queue SET running = 1, attempts = ?2, start_time = ?3 WHERE prompt_id = ?1")?.execute(params![
        item.prompt_id,
        item.attempts,
        crate::time::now_ms()
    ])?;
    Ok(Some(item))
}

/// A database written before `history.workflow_id` existed gets the column, filled from the
/// entries.
fn add_workflow_id(conn: &Connection) -> Result<()> {
    let has: bool = conn.query_row("SELECT count(*) FROM pragma_table_info('history') WHERE name = 'workflow_id'", [], |r| r.get::<_, i64>(0))? > 0;
    if !has {
        conn.execute_batch(
            "ALTER TABLE history ADD COLUMN workflow_id TEXT;
             UPDATE history SET workflow_id = json_extract(entry, '$.prompt[3].extra_pnginfo.workflow.id');",
        )?;
    }
    Ok(())
}

const COLS: &str = "prompt_id, number, number_json, priority, running, prompt, extra_data, outputs, sensitive, create_time, attempts";

struct Row {
    prompt_id: String,
    number: f64,
    number_json: String,
    priority: i64,
    running: bool,
    prompt: String,
    extra_data: String,
    outputs: String,
    sensitive: String,
    create_time: i64,
    attempts: i64,
}

fn row_item(r: &rusqlite::Row) -> rusqlite::Result<Row> {
    Ok(Row {
        prompt_id: r.get(0)?,
        number: r.get(1)?,
        number_json: r.get(2)?,
        priority: r.get(3)?,
        running: r.get::<_, i64>(4)? != 0,
        prompt: r.get(5)?,
        extra_data: r.get(6)?,
        outputs: r.get(7)?,
        sensitive: r.get(8)?,
        create_time: r.get(9)?,
        attempts: r.get(10)?,
    })
}

fn decode_item(r: Row) -> Result<QueueItem> {
    Ok(QueueItem {
        prompt_id: r.prompt_id,
        number: r.number,
        number_json: serde_json::from_str(&r.number_json)?,
        priority: r.priority,
        prompt: serde_json::from_str(&r.prompt)?,
        extra_data: serde_json::from_str(&r.extra_data)?,
        outputs: serde_json::from_str(&r.outputs)?,
        sensitive: serde_json::from_str(&r.sensitive)?,
        create_time: r.create_time,
        attempts: r.attempts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(id: &str) -> QueueItem {
        QueueItem {
            prompt_id: id.into(),
            number: 1.0,
            number_json: json!(1),
            priority: 0,
            prompt: json!({}),
            extra_data: json!({}),
            outputs: vec![],
            sensitive: json!({}),
            create_time: 0,
            attempts: 0,
        }
    }

    fn finished(id: &str, outcome: Outcome) -> Finished {
        Finished { prompt_id: id.into(), outcome, entry: json!({"prompt": [1, id, {}, {}, []], "outputs": {}}), number: 1.0, create_time: 0, start_time: 1, end_time: 2 }
    }

    /// Two deliveries of one prompt report outcomes: the first is recorded, the second changes
    /// nothing; a prompt that is not running (still pending, or unknown) is not recorded.
    #[test]
    fn an_outcome_is_recorded_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.sqlite"), 10).unwrap();
        store.enqueue(&item("p1")).unwrap();
        assert!(!store.record_once(&finished("p1", Outcome::Completed)).unwrap(), "pending, not dispatched");
        assert_eq!(store.take_next().unwrap().unwrap().prompt_id, "p1");
        assert!(store.record_once(&finished("p1", Outcome::Completed)).unwrap());
        assert!(!store.record_once(&finished("p1", Outcome::Failed)).unwrap(), "a second delivery's outcome");
        assert!(!store.record_once(&finished("nope", Outcome::Completed)).unwrap());
        let outcome: String = store.with_conn(|c| Ok(c.query_row("SELECT outcome FROM history WHERE prompt_id = 'p1'", [], |r| r.get(0))?)).unwrap();
        assert_eq!(outcome, "completed");
        assert_eq!(store.queue_len().unwrap(), 0);
    }
}
