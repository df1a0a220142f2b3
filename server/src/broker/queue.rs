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
    /// The stream it was claimed from: the shared one, or the claiming worker's offers.
    pub stream: String,
    /// The stream entry (what renew and ack name).
    pub entry: String,
    pub job: Job,
    /// How many times the prompt was handed out (1 on the first claim; more after reclaims,
    /// counting those of an offer that moved to the shared stream).
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
    /// A worker's queue: its offers stream (docs/scale-out.md, "Cache affinity"), read first.
    own: Option<String>,
    /// When this queue last looked for lapsed leases (a claim looks at most every third of the
    /// lease, a second at most: in a busy queue every claim would otherwise pay a round trip).
    reclaimed: std::sync::Arc<std::sync::Mutex<Option<std::time::Instant>>>,
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
/// (answers 1); marked cancelled (`KEYS[2]`, for `ARGV[3]` seconds) when a worker did (2); 0
/// when it is not in this stream. A stream holds only what is waiting or running, a few
/// entries per worker, so the scan is short.
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
return 0
";

/// Gives entry `ARGV[3]` of `KEYS[1]` back while it is still consumer `ARGV[2]`'s: added again
/// at the stream's end, unclaimed (a read that returned two prompts keeps one).
const RELEASE: &str = r"
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if #p == 0 or p[1][2] ~= ARGV[2] then return 0 end
local e = redis.call('XRANGE', KEYS[1], ARGV[3], ARGV[3])
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
redis.call('XDEL', KEYS[1], ARGV[3])
if #e == 1 then redis.call('XADD', KEYS[1], '*', unpack(e[1][2])) end
return 1
";

/// Moves what a worker's offers stream `KEYS[1]` should no longer hold to the shared stream
/// `KEYS[2]`: offers nobody claimed within `ARGV[2]` ms, and claimed ones whose lease (`ARGV[3]`
/// ms) lapsed (their worker died). A moved entry keeps its fields; `prior` counts the
/// deliveries it had, so delivery numbers keep growing. Answers how many moved.
const SWEEP: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local moved = 0
for _, e in ipairs(redis.call('XRANGE', KEYS[1], '-', '+')) do
  local id, f = e[1], e[2]
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1)
  local had = nil
  if #p == 0 then
    if now - tonumber(string.match(id, '^(%d+)')) >= tonumber(ARGV[2]) then had = 0 end
  elseif p[1][3] >= tonumber(ARGV[3]) then
    had = p[1][4]
  end
  if had ~= nil then
    local fields, prior = {}, 0
    for i = 1, #f, 2 do
      if f[i] == 'prior' then prior = tonumber(f[i + 1]) else
        table.insert(fields, f[i]); table.insert(fields, f[i + 1])
      end
    end
    table.insert(fields, 'prior'); table.insert(fields, tostring(prior + had))
    redis.call('XADD', KEYS[2], '*', unpack(fields))
    redis.call('XACK', KEYS[1], ARGV[1], id)
    redis.call('XDEL', KEYS[1], id)
    moved = moved + 1
  end
end
return moved
";

/// Entries of streams `KEYS` not claimed by any worker of group `ARGV[1]`: in one round trip,
/// as the dispatcher asks before every prompt it hands out.
const WAITING: &str = r"
local n = 0
for _, k in ipairs(KEYS) do
  n = n + redis.call('XLEN', k)
  local p = redis.call('XPENDING', k, ARGV[1])
  n = n - p[1]
end
return n
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
        let q = PromptQueue { url: url.to_string(), stream: ns.prompts(), group: ns.workers_group(), cmd, blocking, ns: ns.clone(), own: None, reclaimed: Default::default() };
        q.ensure_group().await?;
        Ok(q)
    }

    /// This queue as worker `name` reads it: its offers first (docs/scale-out.md, "Cache
    /// affinity"), then the shared stream.
    pub async fn for_worker(mut self, name: &str) -> Result<PromptQueue, BrokerError> {
        self.own = Some(self.ns.offers(name));
        self.ensure_group().await?;
        Ok(self)
    }

    fn err(&self, source: redis::RedisError) -> BrokerError {
        BrokerError::Redis { url: self.url.clone(), source }
    }

    /// Runs one of the scripts above on `keys`; the group is its first argument, `args` follow.
    async fn script(&self, src: &str, keys: &[&str], args: &[String]) -> Result<i64, BrokerError> {
        let script = redis::Script::new(src);
        let mut call = script.prepare_invoke();
        for k in keys {
            call.key(*k);
        }
        call.arg(self.group);
        for a in args {
            call.arg(a);
        }
        call.invoke_async(&mut self.cmd.clone()).await.map_err(|e| self.err(e))
    }

    /// Creates the group at the start of the shared stream (and of this worker's offers), so
    /// entries added before it are delivered too. Also what recovers a Redis that restarted
    /// without its data.
    pub async fn ensure_group(&self) -> Result<(), BrokerError> {
        self.ensure_group_of(&self.stream).await?;
        if let Some(own) = &self.own {
            self.ensure_group_of(own).await?;
        }
        Ok(())
    }

    async fn ensure_group_of(&self, stream: &str) -> Result<(), BrokerError> {
        let r: redis::RedisResult<()> =
            redis::cmd("XGROUP").arg("CREATE").arg(stream).arg(self.group).arg("0").arg("MKSTREAM").query_async(&mut self.cmd.clone()).await;
        match r {
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            other => other.map_err(|e| self.err(e)),
        }
    }

    /// Appends `job` to the shared stream; returns its entry id. Acknowledged by Redis (with
    /// `appendfsync always`, on disk) when this returns.
    pub async fn publish(&self, job: &Job) -> Result<String, BrokerError> {
        let body = serde_json::to_string(job).expect("a job serializes");
        self.cmd.clone().xadd(&self.stream, "*", &[("prompt_id", job.prompt_id.as_str()), ("job", body.as_str())]).await.map_err(|e| self.err(e))
    }

    /// Offers `job` to worker `worker` first: it goes to that worker's offers stream, which
    /// [`PromptQueue::sweep_offers`] empties into the shared stream when the worker does not
    /// claim it in time.
    pub async fn offer(&self, job: &Job, worker: &str) -> Result<String, BrokerError> {
        let stream = self.ns.offers(worker);
        self.ensure_group_of(&stream).await?;
        let _: () = self.cmd.clone().sadd(self.ns.offer_streams(), &stream).await.map_err(|e| self.err(e))?;
        let body = serde_json::to_string(job).expect("a job serializes");
        self.cmd.clone().xadd(&stream, "*", &[("prompt_id", job.prompt_id.as_str()), ("job", body.as_str())]).await.map_err(|e| self.err(e))
    }

    /// Every workers' offers stream there has been.
    async fn offer_streams(&self) -> Result<Vec<String>, BrokerError> {
        self.cmd.clone().smembers(self.ns.offer_streams()).await.map_err(|e| self.err(e))
    }

    /// The shared stream and every offers stream.
    async fn all_streams(&self) -> Result<Vec<String>, BrokerError> {
        let mut v = vec![self.stream.clone()];
        v.extend(self.offer_streams().await?);
        Ok(v)
    }

    /// Moves offers not claimed within `wait`, and claimed ones whose lease lapsed (each
    /// worker's own, as `alive` lists them), to the shared stream; all of them for workers not
    /// in `alive` (their heartbeats expired). How many moved.
    pub async fn sweep_offers(&self, wait: Duration, alive: &[(String, Duration)]) -> Result<u64, BrokerError> {
        let mut moved = 0;
        for stream in self.offer_streams().await? {
            let worker = stream.strip_prefix(&self.ns.offers("")).unwrap_or("");
            let (wait, lease) = match alive.iter().find(|(a, _)| a == worker) {
                Some((_, lease)) => (wait, *lease),
                None => (Duration::ZERO, Duration::ZERO),
            };
            let n = self.script(SWEEP, &[&stream, &self.stream], &[wait.as_millis().to_string(), lease.as_millis().to_string()]).await?;
            moved += n as u64;
        }
        Ok(moved)
    }

    /// The next prompt for `consumer`: a lapsed one first (its lease older than `lease`), else
    /// one offered to this worker, else a new one, waiting up to `wait` for it.
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
        if self.reclaim_due(lease) {
            if let Some(d) = self.reclaim(consumer, lease).await? {
                return Ok(Some(d));
            }
        }
        let streams: Vec<&str> = match &self.own {
            Some(own) => vec![own.as_str(), self.stream.as_str()],
            None => vec![self.stream.as_str()],
        };
        // What waits already, without blocking (offers first), then a wait on both.
        if let Some(d) = self.read(consumer, &streams, None).await? {
            return Ok(Some(d));
        }
        self.read(consumer, &streams, Some(wait)).await
    }

    /// Whether a claim should look for lapsed leases now (and it is noted that it did).
    fn reclaim_due(&self, lease: Duration) -> bool {
        let every = (lease / 3).min(Duration::from_secs(1));
        let mut last = self.reclaimed.lock().unwrap_or_else(|p| p.into_inner());
        match *last {
            Some(t) if t.elapsed() < every => false,
            _ => {
                *last = Some(std::time::Instant::now());
                true
            }
        }
    }

    /// One new entry of `streams` (the first listed preferred), waiting up to `wait` when
    /// given. A read that returns entries of two streams gives the others back.
    async fn read(&self, consumer: &str, streams: &[&str], wait: Option<Duration>) -> Result<Option<Delivery>, BrokerError> {
        let mut opts = redis::streams::StreamReadOptions::default().group(self.group, consumer).count(1);
        let mut con = match wait {
            Some(w) => {
                opts = opts.block(w.as_millis().max(1) as usize);
                self.blocking.clone()
            }
            None => self.cmd.clone(),
        };
        let ids = vec![">"; streams.len()];
        let reply: Option<StreamReadReply> = con.xread_options(streams, &ids, &opts).await.map_err(|e| self.err(e))?;
        let mut got: Vec<(String, StreamId)> =
            reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids.into_iter().map(move |id| (k.key.clone(), id))).collect();
        got.sort_by_key(|(k, _)| streams.iter().position(|s| s == k));
        let mut got = got.into_iter();
        let Some((stream, first)) = got.next() else { return Ok(None) };
        for (k, other) in got {
            self.script(RELEASE, &[&k], &[consumer.to_string(), other.id.clone()]).await?;
        }
        self.delivery(&stream, first, 1).map(Some)
    }

    /// One entry of the shared stream whose lease lapsed, now `consumer`'s. (Offers whose lease
    /// lapsed are moved to the shared stream by the server first.)
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
        self.delivery(&self.stream.clone(), entry, deliveries).map(Some)
    }

    async fn delivery_count(&self, entry: &str) -> Result<Option<u64>, BrokerError> {
        let reply: redis::streams::StreamPendingCountReply =
            self.cmd.clone().xpending_count(&self.stream, self.group, entry, entry, 1).await.map_err(|e| self.err(e))?;
        Ok(reply.ids.first().map(|p| p.times_delivered as u64))
    }

    /// `deliveries`: the times this entry was handed out; those before it moved are added.
    fn delivery(&self, stream: &str, entry: StreamId, deliveries: u64) -> Result<Delivery, BrokerError> {
        let bad = |why: String| BrokerError::Entry { stream: stream.to_string(), entry: entry.id.clone(), why };
        let body = match entry.map.get("job") {
            Some(Value::BulkString(b)) => b.clone(),
            Some(other) => return Err(bad(format!("its job field is {other:?}, not a string"))),
            None => return Err(bad("it has no job field".into())),
        };
        let prior = match entry.map.get("prior") {
            Some(Value::BulkString(b)) => String::from_utf8_lossy(b).parse::<u64>().map_err(|_| bad("its prior field is not a count".into()))?,
            _ => 0,
        };
        let job: Job = serde_json::from_slice(&body).map_err(|e| bad(format!("its job does not parse: {e}")))?;
        Ok(Delivery { stream: stream.to_string(), entry: entry.id.clone(), job, deliveries: prior + deliveries })
    }

    /// Resets the lease of `d` if it is still `consumer`'s, and says whether its prompt was
    /// cancelled meanwhile.
    pub async fn renew(&self, consumer: &str, d: &Delivery) -> Result<Lease, BrokerError> {
        let n = self.script(RENEW, &[&d.stream, &self.ns.cancelled(&d.job.prompt_id)], &[consumer.to_string(), d.entry.clone()]).await?;
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

    /// Takes `prompt_id` back (a cancel): see [`Withdrawal`]. Not found in any stream, it is
    /// marked cancelled all the same: its publication may still come.
    pub async fn withdraw(&self, prompt_id: &str) -> Result<Withdrawal, BrokerError> {
        for stream in self.all_streams().await? {
            let n = self.script(WITHDRAW, &[&stream, &self.ns.cancelled(prompt_id)], &[prompt_id.to_string(), CANCEL_TTL.as_secs().to_string()]).await?;
            match n {
                1 => return Ok(Withdrawal::Removed),
                2 => return Ok(Withdrawal::Running),
                _ => {}
            }
        }
        let _: () = self.cmd.clone().set_ex(self.ns.cancelled(prompt_id), 1, CANCEL_TTL.as_secs()).await.map_err(|e| self.err(e))?;
        Ok(Withdrawal::Absent)
    }

    /// Acknowledges and removes `d` if it is still `consumer`'s; false otherwise (another
    /// worker reclaimed it: its own acknowledgement will remove it).
    pub async fn ack(&self, consumer: &str, d: &Delivery) -> Result<bool, BrokerError> {
        let n = self.script(ACK, &[&d.stream], &[consumer.to_string(), d.entry.clone()]).await?;
        Ok(n == 1)
    }

    /// The prompt ids of every entry in the streams (waiting or claimed; offers included).
    pub async fn prompt_ids(&self) -> Result<std::collections::HashSet<String>, BrokerError> {
        let mut ids = std::collections::HashSet::new();
        for stream in self.all_streams().await? {
            let reply: redis::streams::StreamRangeReply = self.cmd.clone().xrange_all(&stream).await.map_err(|e| self.err(e))?;
            ids.extend(reply.ids.into_iter().filter_map(|e| match e.map.get("prompt_id") {
                Some(Value::BulkString(b)) => Some(String::from_utf8_lossy(b).into_owned()),
                _ => None,
            }));
        }
        Ok(ids)
    }

    /// Entries waiting to be claimed or running (not yet acknowledged), offers included.
    pub async fn entries(&self) -> Result<u64, BrokerError> {
        let mut n = 0;
        for stream in self.all_streams().await? {
            n += self.cmd.clone().xlen::<_, u64>(&stream).await.map_err(|e| self.err(e))?;
        }
        Ok(n)
    }

    /// Entries no worker has claimed yet, offers included.
    pub async fn waiting(&self) -> Result<u64, BrokerError> {
        let streams = self.all_streams().await?;
        let keys: Vec<&str> = streams.iter().map(String::as_str).collect();
        Ok(self.script(WAITING, &keys, &[]).await?.max(0) as u64)
    }

    /// Entries claimed and not yet acknowledged, offers included.
    pub async fn pending(&self) -> Result<u64, BrokerError> {
        let mut n = 0;
        for stream in self.all_streams().await? {
            let v: Value = redis::cmd("XPENDING").arg(&stream).arg(self.group).query_async(&mut self.cmd.clone()).await.map_err(|e| self.err(e))?;
            if let Value::Array(items) = v {
                if let Some(Value::Int(c)) = items.first() {
                    n += *c as u64;
                }
            }
        }
        Ok(n)
    }
}
