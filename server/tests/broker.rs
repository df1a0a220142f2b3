//! The prompt stream against a real redis-server (Debian's, on a free loopback port): delivery
//! to one consumer, leases, reclaiming from a dead worker, persistence across a Redis crash.

use std::time::Duration;

use comfyrs_server::broker::{BrokerError, Job, Lease, Namespace, PromptQueue, Withdrawal};
use serde_json::json;

#[path = "common/redis.rs"]
mod redis_server;

use redis_server::RedisServer;

fn job(id: &str) -> Job {
    Job {
        prompt_id: id.to_string(),
        number: 1.0,
        prompt: json!({"1": {"class_type": "X", "inputs": {}}}),
        extra_data: json!({"client_id": "c"}),
        outputs: vec!["1".into()],
        sensitive: json!({}),
        create_time: 0,
        affinity: Vec::new(),
    }
}

const LEASE: Duration = Duration::from_millis(300);
const NO_WAIT: Duration = Duration::from_millis(1);

async fn queue(redis: &RedisServer) -> PromptQueue {
    PromptQueue::connect(&redis.url(), &Namespace::default()).await.unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test]
async fn a_claimed_and_acknowledged_prompt_leaves_the_stream() {
    let redis = RedisServer::start().unwrap();
    let q = queue(&redis).await;
    q.publish(&job("p1")).await.unwrap();
    assert_eq!(q.entries().await.unwrap(), 1);
    let d = q.claim("w1", LEASE, NO_WAIT).await.unwrap().expect("a prompt");
    assert_eq!(d.job, job("p1"));
    assert_eq!(d.deliveries, 1);
    assert_eq!(q.pending().await.unwrap(), 1);
    assert!(q.ack("w1", &d).await.unwrap());
    assert_eq!((q.entries().await.unwrap(), q.pending().await.unwrap()), (0, 0));
    // Nothing left: a claim waits its bounded time and comes back empty.
    assert!(q.claim("w1", LEASE, Duration::from_millis(50)).await.unwrap().is_none());
}

#[tokio::test]
async fn each_prompt_goes_to_one_of_the_workers() {
    let redis = RedisServer::start().unwrap();
    let q = queue(&redis).await;
    for i in 0..40 {
        q.publish(&job(&format!("p{i}"))).await.unwrap();
    }
    let take = |name: &'static str| {
        let q = q.clone();
        tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(d) = q.claim(name, Duration::from_secs(60), Duration::from_millis(50)).await.unwrap() {
                assert!(q.ack(name, &d).await.unwrap());
                got.push(d.job.prompt_id);
            }
            got
        })
    };
    let (a, b, c) = (take("w1"), take("w2"), take("w3"));
    let mut all: Vec<String> = [a.await.unwrap(), b.await.unwrap(), c.await.unwrap()].concat();
    all.sort_by_key(|id| id[1..].parse::<u32>().unwrap());
    assert_eq!(all, (0..40).map(|i| format!("p{i}")).collect::<Vec<_>>(), "every prompt once");
}

#[tokio::test]
async fn a_lapsed_lease_is_reclaimed_and_the_old_owner_cannot_acknowledge() {
    let redis = RedisServer::start().unwrap();
    let q = queue(&redis).await;
    q.publish(&job("p1")).await.unwrap();
    let first = q.claim("dead", LEASE, NO_WAIT).await.unwrap().unwrap();
    // Within the lease nobody else gets it.
    assert!(q.claim("w2", LEASE, NO_WAIT).await.unwrap().is_none());
    tokio::time::sleep(LEASE + Duration::from_millis(150)).await;
    let second = q.claim("w2", LEASE, NO_WAIT).await.unwrap().expect("reclaimed");
    assert_eq!((second.entry.as_str(), second.deliveries), (first.entry.as_str(), 2));
    assert_eq!(second.job, first.job);
    // The first worker (it was only slow) can neither renew nor acknowledge the new owner's run.
    assert_eq!(q.renew("dead", &first).await.unwrap(), Lease::Lost);
    assert!(!q.ack("dead", &first).await.unwrap());
    assert_eq!(q.pending().await.unwrap(), 1);
    assert!(q.ack("w2", &second).await.unwrap());
    assert_eq!(q.entries().await.unwrap(), 0);
}

#[tokio::test]
async fn a_withdrawn_prompt_is_gone_before_its_claim_and_marked_cancelled_after() {
    let redis = RedisServer::start().unwrap();
    let q = queue(&redis).await;
    for id in ["p1", "p2", "p3"] {
        q.publish(&job(id)).await.unwrap();
    }
    // Not claimed yet: taken out of the stream; nobody gets it.
    assert_eq!(q.withdraw("p2").await.unwrap(), Withdrawal::Removed);
    let a = q.claim("w1", LEASE, NO_WAIT).await.unwrap().unwrap();
    let b = q.claim("w1", LEASE, NO_WAIT).await.unwrap().unwrap();
    assert_eq!((a.job.prompt_id.as_str(), b.job.prompt_id.as_str()), ("p1", "p3"));
    assert!(q.claim("w1", LEASE, NO_WAIT).await.unwrap().is_none());
    // Claimed: it stays the worker's, which learns of the cancel at its check and its renewal.
    assert!(!q.cancelled("p1").await.unwrap());
    assert_eq!(q.withdraw("p1").await.unwrap(), Withdrawal::Running);
    assert!(q.cancelled("p1").await.unwrap());
    assert_eq!(q.renew("w1", &a).await.unwrap(), Lease::Cancelled);
    assert_eq!(q.renew("w1", &b).await.unwrap(), Lease::Kept);
    // Not in the stream (its publication still to come): marked, so the worker skips it.
    assert_eq!(q.withdraw("p9").await.unwrap(), Withdrawal::Absent);
    assert!(q.cancelled("p9").await.unwrap());
}

#[tokio::test]
async fn an_offer_goes_to_its_worker_first_and_to_anyone_after_the_wait() {
    let redis = RedisServer::start().unwrap();
    let server = queue(&redis).await;
    let w1 = queue(&redis).await.for_worker("w1").await.unwrap();
    let w2 = queue(&redis).await.for_worker("w2").await.unwrap();
    server.publish(&job("shared")).await.unwrap();
    server.offer(&job("for-w1"), "w1").await.unwrap();
    assert_eq!(server.entries().await.unwrap(), 2, "offers count as waiting");
    // w1 takes its offer before the shared prompt; w2 never sees the offer.
    let a = w1.claim("w1", LEASE, NO_WAIT).await.unwrap().unwrap();
    assert_eq!((a.job.prompt_id.as_str(), a.stream.as_str(), a.deliveries), ("for-w1", "comfyrs:offers:w1", 1));
    let b = w2.claim("w2", LEASE, NO_WAIT).await.unwrap().unwrap();
    assert_eq!(b.job.prompt_id, "shared");
    assert!(w2.claim("w2", LEASE, NO_WAIT).await.unwrap().is_none());
    assert_eq!(w1.renew("w1", &a).await.unwrap(), Lease::Kept);
    assert!(w1.ack("w1", &a).await.unwrap());
    assert!(w2.ack("w2", &b).await.unwrap());

    // Not claimed within the wait (w1 is busy): any worker may take it.
    server.offer(&job("late"), "w1").await.unwrap();
    let alive = [("w1".to_string(), LEASE), ("w2".to_string(), LEASE)];
    assert_eq!(server.sweep_offers(Duration::from_secs(60), &alive).await.unwrap(), 0, "still within the wait");
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(server.sweep_offers(Duration::from_millis(10), &alive).await.unwrap(), 1);
    let c = w2.claim("w2", LEASE, NO_WAIT).await.unwrap().expect("moved to the shared stream");
    assert_eq!((c.job.prompt_id.as_str(), c.stream.as_str(), c.deliveries), ("late", "comfyrs:prompts", 1));
    assert!(w2.ack("w2", &c).await.unwrap());

    // Claimed by a worker that died (its heartbeat is gone): moved at once, and its next
    // delivery counts the first.
    server.offer(&job("orphan"), "w1").await.unwrap();
    let dead = w1.claim("w1", LEASE, NO_WAIT).await.unwrap().unwrap();
    assert_eq!(server.sweep_offers(Duration::from_secs(60), &alive[1..]).await.unwrap(), 1);
    let again = w2.claim("w2", LEASE, NO_WAIT).await.unwrap().expect("taken over");
    assert_eq!((again.job.prompt_id.as_str(), again.deliveries), ("orphan", 2));
    assert_eq!(w1.renew("w1", &dead).await.unwrap(), Lease::Lost);
    assert!(!w1.ack("w1", &dead).await.unwrap());
    // A cancel finds an offer too.
    server.offer(&job("cancel-me"), "w2").await.unwrap();
    assert_eq!(server.withdraw("cancel-me").await.unwrap(), Withdrawal::Removed);
    assert!(server.prompt_ids().await.unwrap().contains("orphan"));
    assert!(!server.prompt_ids().await.unwrap().contains("cancel-me"));
}

#[tokio::test]
async fn renewing_keeps_the_lease() {
    let redis = RedisServer::start().unwrap();
    let q = queue(&redis).await;
    q.publish(&job("p1")).await.unwrap();
    // A lease long enough that a loaded machine's late wake-ups stay well inside it.
    let lease = Duration::from_millis(1500);
    let d = q.claim("w1", lease, NO_WAIT).await.unwrap().unwrap();
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(q.renew("w1", &d).await.unwrap(), Lease::Kept);
        assert!(q.claim("w2", lease, NO_WAIT).await.unwrap().is_none(), "a renewed lease is not reclaimed");
    }
    // Renewals stop (the worker died): the prompt moves on.
    tokio::time::sleep(lease + Duration::from_millis(150)).await;
    assert_eq!(q.claim("w2", lease, NO_WAIT).await.unwrap().expect("reclaimed").job.prompt_id, "p1");
}

#[tokio::test]
async fn published_prompts_survive_a_redis_crash_with_append_only_persistence() {
    let dir = tempfile::tempdir().unwrap();
    let mut redis = RedisServer::start_persistent(dir.path()).unwrap();
    let q = queue(&redis).await;
    for i in 0..3 {
        q.publish(&job(&format!("p{i}"))).await.unwrap();
    }
    let claimed = q.claim("w1", LEASE, NO_WAIT).await.unwrap().unwrap();
    redis.restart().unwrap(); // SIGKILL, then a start over the same files
    // The same queue object reconnects by itself. (A long lease here: the claim made before the
    // crash must not be reclaimed yet, however long the restart took.)
    let mut ids = Vec::new();
    for _ in 0..20 {
        match q.claim("w2", Duration::from_secs(60), NO_WAIT).await {
            Ok(Some(d)) => {
                assert!(q.ack("w2", &d).await.unwrap());
                ids.push(d.job.prompt_id);
            }
            Ok(None) if ids.len() == 2 => break,
            Ok(None) => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(e) if e.is_transient() => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(ids, ["p1", "p2"]);
    // The claim made before the crash survived too: its lease lapses, and it is reclaimed.
    tokio::time::sleep(LEASE + Duration::from_millis(150)).await;
    let again = q.claim("w2", LEASE, NO_WAIT).await.unwrap().expect("the claimed prompt");
    assert_eq!(again.job.prompt_id, claimed.job.prompt_id);
}

#[tokio::test]
async fn an_unreachable_redis_is_a_transient_error_that_names_it() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("redis://127.0.0.1:{port}");
    let err = PromptQueue::connect(&url, &Namespace::default()).await.err().expect("nothing listens there");
    assert!(err.is_transient(), "{err:?}");
    assert!(err.to_string().contains(&url), "{err}");
    let bad = PromptQueue::connect("http://localhost", &Namespace::default()).await.err().unwrap();
    assert!(matches!(bad, BrokerError::Url { .. }) && !bad.is_transient(), "{bad:?}");
}

#[tokio::test]
async fn an_entry_that_is_not_a_job_is_reported() {
    let redis = RedisServer::start().unwrap();
    let q = queue(&redis).await;
    let client = redis::Client::open(redis.url()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let _: String = redis::cmd("XADD").arg("comfyrs:prompts").arg("*").arg("job").arg("{not json").query_async(&mut c).await.unwrap();
    let err = q.claim("w1", LEASE, NO_WAIT).await.expect_err("a bad entry");
    assert!(matches!(err, BrokerError::Entry { .. }), "{err:?}");
    assert!(err.to_string().contains("comfyrs:prompts") && err.to_string().contains("does not parse"), "{err}");
}

#[test]
fn namespaces_are_checked() {
    assert_eq!(Namespace::default().prompts(), "comfyrs:prompts");
    assert_eq!(Namespace::new("staging:eu").unwrap().prompts(), "staging:eu:prompts");
    for bad in ["", "a:", "a b"] {
        assert!(Namespace::new(bad).is_err(), "{bad:?}");
    }
}

#[tokio::test]
async fn events_of_concurrent_prompts_arrive_complete_and_in_order() {
    use comfyrs_server::broker::{EventLog, EventReader};
    let redis = RedisServer::start().unwrap();
    let ns = Namespace::default();
    let url = redis.url();
    // Something from an earlier run is not read by a reader started after it.
    let conn = EventLog::connection(&url).await.unwrap();
    EventLog::new(&url, conn.clone(), &ns, "old", 1).send("executing", &json!({"node": "9"}), None, false).await.unwrap();
    let mut reader = EventReader::new(&url, &ns).await.unwrap();
    let send = |prompt: &'static str| {
        let log = EventLog::new(&url, conn.clone(), &ns, prompt, 1);
        tokio::spawn(async move {
            for i in 0..50u32 {
                let png = (i % 10 == 0).then(|| vec![0x89, b'P', b'N', b'G', i as u8, 0, 255]);
                log.send(if png.is_some() { "preview" } else { "progress" }, &json!({"value": i, "prompt_id": prompt}), png.as_deref(), false).await.unwrap();
            }
        })
    };
    let (a, b) = (send("pa"), send("pb"));
    a.await.unwrap();
    b.await.unwrap();
    let mut got = Vec::new();
    for _ in 0..50 {
        if got.len() == 100 {
            break;
        }
        got.extend(reader.next(Duration::from_millis(100)).await.unwrap());
    }
    assert_eq!(got.len(), 100, "every event, nothing from before the reader");
    for p in ["pa", "pb"] {
        let mine: Vec<_> = got.iter().filter(|e| e.prompt_id == p).collect();
        assert_eq!(mine.iter().map(|e| e.seq).collect::<Vec<_>>(), (0..50).collect::<Vec<u64>>(), "{p} in order, no gaps");
        assert!(mine.iter().all(|e| e.data["value"].as_u64() == Some(e.seq) && e.delivery == 1));
        let previews: Vec<_> = mine.iter().filter(|e| e.kind == "preview").collect();
        assert_eq!(previews.len(), 5);
        assert!(previews.iter().all(|e| e.bytes.as_deref() == Some(&[0x89, b'P', b'N', b'G', e.seq as u8, 0, 255][..])), "binary payloads intact");
    }
    // A reader resumed from the last id it reached sees only what came after.
    let last = reader.last_id().to_string();
    EventLog::new(&url, conn, &ns, "pc", 2).send("executing", &json!({"node": null}), None, true).await.unwrap();
    let mut resumed = EventReader::resume(&url, &ns, &last).await.unwrap();
    let next = resumed.next(Duration::from_millis(500)).await.unwrap();
    assert_eq!(next.iter().map(|e| (e.prompt_id.as_str(), e.delivery, e.seq, e.to_all_without_client)).collect::<Vec<_>>(), [("pc", 2, 0, true)]);
    assert!(got.iter().all(|e| !e.to_all_without_client));
}

#[tokio::test]
async fn control_messages_reach_every_subscribed_worker() {
    use comfyrs_server::broker::{ControlChannel, ControlMessage, ControlSubscriber};
    let redis = RedisServer::start().unwrap();
    let ns = Namespace::default();
    let mut w1 = ControlSubscriber::subscribe(&redis.url(), &ns).await.unwrap();
    let mut w2 = ControlSubscriber::subscribe(&redis.url(), &ns).await.unwrap();
    let server = ControlChannel::connect(&redis.url(), &ns).await.unwrap();
    let stop = ControlMessage::Interrupt { prompt_id: "p7".into() };
    assert_eq!(server.send(&stop).await.unwrap(), 2, "both workers listen");
    server.send(&ControlMessage::InterruptAll).await.unwrap();
    for w in [&mut w1, &mut w2] {
        let got = tokio::time::timeout(Duration::from_secs(5), async { (w.next().await, w.next().await) }).await.expect("delivered");
        assert_eq!(got, (Some(stop.clone()), Some(ControlMessage::InterruptAll)));
    }
}

#[tokio::test]
async fn a_redis_that_lost_its_data_gets_its_group_back_on_the_next_claim() {
    let redis = RedisServer::start().unwrap();
    let q = queue(&redis).await;
    redis.flush_all();
    q.publish(&job("after")).await.unwrap();
    assert_eq!(q.claim("w1", LEASE, NO_WAIT).await.unwrap().expect("claimed").job.prompt_id, "after");
}
