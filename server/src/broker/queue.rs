//! The prompt stream and its consumer group: at-least-once delivery with leases.
//!
//! A worker claims an entry (XREADGROUP), renews its lease while it runs the prompt, and
//! acknowledges it once the server has recorded the outcome; the entry is then deleted (the
//! server's SQLite file keeps the history). An entry whose lease lapsed (its worker was killed
//! or lost Redis) is reclaimed by another worker (XAUTOCLAIM). Renewing and acknowledging check
//! that the entry is still the caller's, so a worker that lost its lease cannot take it back or
//! acknowledge the new owner's run.

use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::streams::{StreamAutoClaimReply, StreamId, StreamReadReply};
use redis::{AsyncCommands, Value};

use super::{BrokerError, Job, Namespace};

/// How long a claimed prompt stays with its worker without a renewal.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);

/// One claimed prompt.
#[derive(Clone, Debug)]
pub struct Delivery {
    /// The stream entry (what renew and ack name).
    pub entry: String,
    pub job: Job,
    /// How many times the entry was handed out (1 on the first claim; more after reclaims).
    pub deliveries: u64,
}

/// The prompt stream of one namespace, over two connections: one for commands, one for a
/// blocking read (which would hold up every command queued behind it on a shared connection).
/// Both reconnect by themselves after Redis restarts.
#[derive(Clone)]
pub struct PromptQueue {
    url: String,
    stream: String,
    group: &'static str,
    cmd: ConnectionManager,
    blocking: ConnectionManager,
    ns: Namespace,
}

/// Renews `ARGV[3]` for consumer `ARGV[2]` (group `ARGV[1]`) only while it is that consumer's:
/// XCLAIM with min-idle 0 resets the idle time, but would also take the entry from a new owner.
/// Answers 2 instead of 1 when its prompt was cancelled meanwhile (the key `KEYS[2]` exists).
const RENEW: &str = r"
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if #p == 0 or p[1][2] ~= ARGV[2] then return 0 end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID')
if redis.call('EXISTS', KEYS[2]) == 1 then return 2 end
return 1
";

/// Takes prompt `ARGV[2]` back from the stream `KEYS[1]`: deleted while no worker claimed it
/// (answers 1); else marked cancelled (`KEYS[2]`, for `ARGV[3]` seconds): 2 when a worker
/// claimed it, 0 when it is not in the stream (the mark then stops it should its publication
/// still come). The stream holds only what is waiting or running, a few entries per worker,
/// so the scan is short.
const WITHDRAW: &str = r"
for _, e in ipairs(redis.call('XRANGE', KEYS[1], '-', '+')) do
  local f = e[2]
  for i = 1, #f, 2 do
    if f[i] == 'prompt_id' and f[i + 1] == ARGV[2] then
      if #redis.call('XPENDING', KEYS[1], ARGV[1], e[1], e[1], 1) == 0 then
        redis.call('XDEL', KEYS[1], e[1])
        return 1
      end
      redis.call('SET', KEYS[2], '1', 'EX', ARGV[3])
      return 2
    end
  end
end
redis.call('SET', KEYS[2], '1', 'EX', ARGV[3])
return 0
";

/// How long a cancellation is remembered for the worker running the prompt.
const CANCEL_TTL: Duration = Duration::from_secs(24 * 3600);

/// What renewing a lease found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lease {
    /// Still this worker's; renewed.
    Kept,
    /// Still this worker's, renewed, but the prompt was cancelled: stop it and report.
    Cancelled,
    /// Another worker reclaimed it (this one was presumed dead), or it was acknowledged.
    Lost,
}

/// What taking a dispatched prompt back found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Withdrawal {
    /// No worker had claimed it: it is gone from the stream and will not run.
    Removed,
    /// A worker runs it: marked cancelled (the worker checks before it starts and at every
    /// renewal, besides hearing the interrupt).
    Running,
    /// Not in the stream (finished, or never dispatched).
    Absent,
}

/// Acknowledges and deletes `ARGV[3]` only while it is consumer `ARGV[2]`'s.
const ACK: &str = r"
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if #p == 0 or p[1][2] ~= ARGV[2] then return 0 end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
redis.call('XDEL', KEYS[1], ARGV[3])
return 1
";

impl PromptQueue {
    /// Connects to `url` and makes sure the stream and its group exist.
    pub async fn connect(url: &str, ns: &Namespace) -> Result<PromptQueue, BrokerError> {
        let cmd = super::conn::manager(url, false).await?;
        let blocking = super::conn::manager(url, true).await?;
        let q = PromptQueue { url: url.to_string(), stream: ns.prompts(), group: ns.workers_group(), cmd, blocking, ns: ns.clone() };
        q.ensure_group().await?;
        Ok(q)
    }

    fn err(&self, source: redis::RedisError) -> BrokerError {
        BrokerError::Redis { url: self.url.clone(), source }
    }

    /// Creates the group at the stream's start (entries added before it are delivered too).
    /// Also what recovers a Redis that restarted without its data.
    pub async fn ensure_group(&self) -> Result<(), BrokerError> {
        let r: redis::RedisResult<()> =
            redis::cmd("XGROUP").arg("CREATE").arg(&self.stream).arg(self.group).arg("0").arg("MKSTREAM").query_async(&mut self.cmd.clone()).await;
        match r {
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            other => other.map_err(|e| self.err(e)),
        }
    }

    /// Appends `job`; returns its entry id. Acknowledged by Redis (with `appendfsync always`,
    /// on disk) when this returns.
    pub async fn publish(&self, job: &Job) -> Result<String, BrokerError> {
        let body = serde_json::to_string(job).expect("a job serializes");
        self.cmd.clone().xadd(&self.stream, "*", &[("prompt_id", job.prompt_id.as_str()), ("job", body.as_str())]).await.map_err(|e| self.err(e))
    }

    /// The next prompt for `consumer`: a lapsed one first (its lease older than `lease`), else
    /// a new one, waiting up to `wait` for it.
    pub async fn claim(&self, consumer: &str, lease: Duration, wait: Duration) -> Result<Option<Delivery>, BrokerError> {
        match self.claim_once(consumer, lease, wait).await {
            // Redis restarted without its data (no append-only file): the group is gone.
            Err(BrokerError::Redis { source, .. }) if source.code() == Some("NOGROUP") => {
                tracing::warn!("the consumer group of {} was gone (Redis lost its data?); created again", self.stream);
                self.ensure_group().await?;
                self.claim_once(consumer, lease, wait).await
            }
            other => other,
        }
    }

    async fn claim_once(&self, consumer: &str, lease: Duration, wait: Duration) -> Result<Option<Delivery>, BrokerError> {
        if let Some(d) = self.reclaim(consumer, lease).await? {
            return Ok(Some(d));
        }
        let opts = redis::streams::StreamReadOptions::default().group(self.group, consumer).count(1).block(wait.as_millis().max(1) as usize);
        let reply: Option<StreamReadReply> =
            self.blocking.clone().xread_options(&[&self.stream], &[">"], &opts).await.map_err(|e| self.err(e))?;
        let Some(entry) = reply.and_then(|r| r.keys.into_iter().next()).and_then(|k| k.ids.into_iter().next()) else {
            return Ok(None);
        };
        self.delivery(entry, 1).map(Some)
    }

    /// One entry whose lease lapsed, now `consumer`'s.
    async fn reclaim(&self, consumer: &str, lease: Duration) -> Result<Option<Delivery>, BrokerError> {
        let opts = redis::streams::StreamAutoClaimOptions::default().count(1);
        let reply: StreamAutoClaimReply = self
            .cmd
            .clone()
            .xautoclaim_options(&self.stream, self.group, consumer, lease.as_millis() as usize, "0-0", opts)
            .await
            .map_err(|e| self.err(e))?;
        let Some(entry) = reply.claimed.into_iter().next() else { return Ok(None) };
        let deliveries = self.delivery_count(&entry.id).await?.unwrap_or(2);
        self.delivery(entry, deliveries).map(Some)
    }

    async fn delivery_count(&self, entry: &str) -> Result<Option<u64>, BrokerError> {
        let reply: redis::streams::StreamPendingCountReply =
            self.cmd.clone().xpending_count(&self.stream, self.group, entry, entry, 1).await.map_err(|e| self.err(e))?;
        Ok(reply.ids.first().map(|p| p.times_delivered as u64))
    }

    fn delivery(&self, entry: StreamId, deliveries: u64) -> Result<Delivery, BrokerError> {
        let bad = |why: String| BrokerError::Entry { stream: self.stream.clone(), entry: entry.id.clone(), why };
        let body = match entry.map.get("job") {
            Some(Value::BulkString(b)) => b.clone(),
            Some(other) => return Err(bad(format!("its job field is {other:?}, not a string"))),
            None => return Err(bad("it has no job field".into())),
        };
        let job: Job = serde_json::from_slice(&body).map_err(|e| bad(format!("its job does not parse: {e}")))?;
        Ok(Delivery { entry: entry.id.clone(), job, deliveries })
    }

    /// Resets the lease of `d` if it is still `consumer`'s, and says whether its prompt was
    /// cancelled meanwhile.
    pub async fn renew(&self, consumer: &str, d: &Delivery) -> Result<Lease, BrokerError> {
        let n: i64 = redis::Script::new(RENEW)
            .key(&self.stream)
            .key(self.ns.cancelled(&d.job.prompt_id))
            .arg(self.group)
            .arg(consumer)
            .arg(&d.entry)
            .invoke_async(&mut self.cmd.clone())
            .await
            .map_err(|e| self.err(e))?;
        Ok(match n {
            1 => Lease::Kept,
            2 => Lease::Cancelled,
            _ => Lease::Lost,
        })
    }

    /// Whether `prompt_id` was cancelled after a worker claimed it.
    pub async fn cancelled(&self, prompt_id: &str) -> Result<bool, BrokerError> {
        self.cmd.clone().exists(self.ns.cancelled(prompt_id)).await.map_err(|e| self.err(e))
    }

    /// Takes `prompt_id` back (a cancel): see [`Withdrawal`].
    pub async fn withdraw(&self, prompt_id: &str) -> Result<Withdrawal, BrokerError> {
        let n: i64 = redis::Script::new(WITHDRAW)
            .key(&self.stream)
            .key(self.ns.cancelled(prompt_id))
            .arg(self.group)
            .arg(prompt_id)
            .arg(CANCEL_TTL.as_secs())
            .invoke_async(&mut self.cmd.clone())
            .await
            .map_err(|e| self.err(e))?;
        Ok(match n {
            1 => Withdrawal::Removed,
            2 => Withdrawal::Running,
            _ => Withdrawal::Absent,
        })
    }


    /// Acknowledges and removes `entry` if it is still `consumer`'s; false otherwise (another
    /// worker reclaimed it: its own acknowledgement will remove it).
    pub async fn ack(&self, consumer: &str, entry: &str) -> Result<bool, BrokerError> {
        self.owned_script(ACK, consumer, entry).await
    }

    async fn owned_script(&self, script: &str, consumer: &str, entry: &str) -> Result<bool, BrokerError> {
        let n: i64 = redis::Script::new(script)
            .key(&self.stream)
            .arg(self.group)
            .arg(consumer)
            .arg(entry)
            .invoke_async(&mut self.cmd.clone())
            .await
            .map_err(|e| self.err(e))?;
        Ok(n == 1)
    }

    /// The prompt ids of every entry in the stream (waiting or claimed).
    pub async fn prompt_ids(&self) -> Result<std::collections::HashSet<String>, BrokerError> {
        let reply: redis::streams::StreamRangeReply = self.cmd.clone().xrange_all(&self.stream).await.map_err(|e| self.err(e))?;
        Ok(reply
            .ids
            .into_iter()
            .filter_map(|e| match e.map.get("prompt_id") {
                Some(Value::BulkString(b)) => Some(String::from_utf8_lossy(b).into_owned()),
                _ => None,
            })
            .collect())
    }

    /// Entries waiting to be claimed or running (not yet acknowledged).
    pub async fn entries(&self) -> Result<u64, BrokerError> {
        self.cmd.clone().xlen(&self.stream).await.map_err(|e| self.err(e))
    }

    /// Entries claimed and not yet acknowledged.
    pub async fn pending(&self) -> Result<u64, BrokerError> {
        let v: Value = redis::cmd("XPENDING").arg(&self.stream).arg(self.group).query_async(&mut self.cmd.clone()).await.map_err(|e| self.err(e))?;
        match v {
            Value::Array(items) => Ok(match items.first() {
                Some(Value::Int(n)) => *n as u64,
                _ => 0,
            }),
            _ => Ok(0),
        }
    }
}
