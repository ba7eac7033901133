//! Claims in etcd (`claims.etcd`): the same claim / commit / release / expiry rules as shared
//! data, kept where every Envoy replica sees them. Encoding and rules: `crate::etcd`.
//!
//! - A claim is one txn (create the key if absent, else read it back): one round trip before
//!   the PUT goes upstream. A record found stale (expired, or committed before this push's
//!   view of the tag) is replaced with a second txn that compares its `mod_revision`.
//! - Every record is bound to this worker's lease (TTL = `claims.ttl_seconds`), granted by the
//!   first claim that needs it and kept alive by the root context's tick: no lease round trip
//!   per push, and a replica that dies leaves nothing past one TTL.
//! - Commit and release go through the root context's queue, never through the stream: calls
//!   a stream dispatched are cancelled when it ends, and the commit must not delay the
//!   client's answer. It is safe if a commit is lost (etcd down right then): the claim record
//!   itself already holds the digest and fences every other one for one TTL from the claim.
//!   The queue also puts back break-glass windows (`filter::window`) a failed write had used.
use super::Claimed;
use crate::config::EtcdSettings;
use crate::etcd::{self as wire, Answer, Found, Record, Txn};
use crate::filter::host::{Host, Level};
use crate::filter::worker::Worker;

/// Calls one claim may make (grant, claim, replace, retries) before it gives up.
const MAX_STEPS: u32 = 6;

/// Tries after a connect failure: with round robin over 3 members and one down, the third try
/// at the latest reaches a live one.
pub(crate) const CONNECT_RETRIES: u32 = 2;

/// A claim waiting for etcd's answer to the call `token`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InFlight {
    pub token: u32,
    key: String,
    digest: String,
    since_ms: u64,
    step: Step,
    steps: u32,
    retries: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Grant,
    Claim,
    /// Replace the stale record found at this `mod_revision`.
    Replace(u64),
}

/// What the root context sends (it outlives the streams).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    Keepalive(u64),
    Commit { key: String, revision: u64, record: Record },
    /// Delete our record if untouched since `revision`, once `due_ms` has come.
    Delete { key: String, revision: u64, due_ms: u64 },
    /// Create the key if absent, bound to `lease`.
    Create { key: String, value: Vec<u8>, lease: u64 },
}

/// Per worker: the lease and the root context's queue.
#[derive(Debug, Default)]
pub struct State {
    lease: Option<u64>,
    keepalive_due_ms: u64,
    queue: Vec<Op>,
    in_flight: Vec<(u32, Op)>,
}

/// How often the root context ticks: commits and releases wait at most this long.
pub const TICK_MS: u64 = 250;

fn down(e: &EtcdSettings, why: &str) -> String {
    format!("the claim store (etcd, cluster '{}') is unavailable: {why}", e.cluster)
}

pub(crate) fn call(host: &dyn Host, e: &EtcdSettings, path: &str, body: &str) -> Result<u32, String> {
    let headers = [(":method", "POST"), (":path", path), (":authority", e.authority.as_str()), ("content-type", "application/json")];
    host.dispatch(&e.cluster, &headers, Some(body.as_bytes()), e.timeout_ms)
        .map_err(|why| format!("cannot dispatch to cluster '{}' ({why})", e.cluster))
}

fn lease(worker: &Worker) -> Option<u64> {
    worker.etcd.try_borrow().ok().and_then(|s| s.lease)
}

fn ttl_seconds(worker: &Worker) -> u64 {
    worker.config.claims.ttl_ms / 1000
}

pub fn claim(host: &dyn Host, worker: &Worker, repository: &str, tag: &str, digest: &str, since_ms: u64) -> Claimed {
    let Some(e) = &worker.config.claims.etcd else { return Claimed::Unavailable("no etcd configured".into()) };
    let key = wire::key(&e.prefix, repository, tag);
    send(host, worker, e, InFlight { token: 0, key, digest: digest.to_string(), since_ms, step: Step::Claim, steps: 0, retries: 0 })
}

/// Sends the claim's next call; without a lease, grants one first.
fn send(host: &dyn Host, worker: &Worker, e: &EtcdSettings, mut f: InFlight) -> Claimed {
    f.steps += 1;
    if f.steps > MAX_STEPS {
        return Claimed::Unavailable(down(e, "the claim did not settle"));
    }
    let record = Record { committed: false, at_ms: host.now_ms(), digest: f.digest.clone() };
    let (path, body) = match (lease(worker), f.step) {
        (None, _) => {
            f.step = Step::Grant;
            ("/v3/lease/grant", wire::grant_body(ttl_seconds(worker)))
        }
        (Some(l), Step::Grant | Step::Claim) => {
            f.step = Step::Claim;
            ("/v3/kv/txn", wire::claim_txn(&f.key, &record, l))
        }
        (Some(l), Step::Replace(m)) => ("/v3/kv/txn", wire::put_if_txn(&f.key, m, &record, l)),
    };
    match call(host, e, path, &body) {
        Ok(token) => {
            f.token = token;
            Claimed::Pending(f)
        }
        Err(why) => Claimed::Unavailable(down(e, &why)),
    }
}

/// The call's status and body; `None` status: a reset.
pub(crate) fn answer(host: &dyn Host, body_size: usize) -> (Option<u16>, Vec<u8>) {
    let status = host.call_response_header(":status").and_then(|s| s.trim().parse().ok());
    (status, host.call_response_body(body_size).unwrap_or_default())
}

/// Envoy's own 503 (it could not connect to the member it picked): worth one more try, which
/// Envoy sends to another member.
pub(crate) fn connect_failure(status: Option<u16>, body: &[u8]) -> bool {
    status == Some(503) && !body.starts_with(b"{")
}

pub fn on_response(host: &dyn Host, worker: &Worker, mut f: InFlight, body_size: usize) -> Claimed {
    let Some(e) = &worker.config.claims.etcd else { return Claimed::Unavailable("no etcd configured".into()) };
    let (status, body) = answer(host, body_size);
    if connect_failure(status, &body) && f.retries < CONNECT_RETRIES {
        f.retries += 1;
        return send(host, worker, e, f);
    }
    if f.step == Step::Grant {
        return match wire::parse_grant(status, &body) {
            Answer::Ok(id) => {
                if let Ok(mut s) = worker.etcd.try_borrow_mut() {
                    s.lease.get_or_insert(id);
                    s.keepalive_due_ms = host.now_ms() + worker.config.claims.ttl_ms / 3;
                }
                f.step = Step::Claim;
                send(host, worker, e, f)
            }
            Answer::LeaseGone => Claimed::Unavailable(down(e, "no lease granted")),
            Answer::Failed(why) => Claimed::Unavailable(down(e, &why)),
        };
    }
    match wire::parse_txn(status, &body) {
        Answer::Ok(Txn::Done { revision }) => Claimed::Proceed { held: true, revision },
        Answer::Ok(Txn::Found(None)) => {
            // Gone between compare and read: claim again.
            f.step = Step::Claim;
            send(host, worker, e, f)
        }
        Answer::Ok(Txn::Found(Some((record, mod_revision)))) => {
            let ttl_ms = worker.config.claims.ttl_ms;
            match wire::judge_found(&record, &f.digest, host.now_ms(), ttl_ms, f.since_ms) {
                Found::Proceed => Claimed::Proceed { held: false, revision: 0 },
                Found::Conflict { digest, committed } => Claimed::Conflict { digest, committed },
                Found::Replace => {
                    f.step = Step::Replace(mod_revision);
                    send(host, worker, e, f)
                }
            }
        }
        Answer::LeaseGone => {
            // Expired (e.g. etcd was out of reach for a TTL): grant a new one and claim again.
            if let Ok(mut s) = worker.etcd.try_borrow_mut() {
                s.lease = None;
            }
            f.step = Step::Claim;
            send(host, worker, e, f)
        }
        Answer::Failed(why) => Claimed::Unavailable(down(e, &why)),
    }
}

fn enqueue(worker: &Worker, op: Op) {
    if let Ok(mut s) = worker.etcd.try_borrow_mut() {
        s.queue.push(op);
    }
}

/// Queues the commit of our claim at `revision` (0: we hold no record, nothing to commit).
pub fn commit(host: &dyn Host, worker: &Worker, repository: &str, tag: &str, digest: &str, revision: u64) {
    let Some(e) = &worker.config.claims.etcd else { return };
    if revision != 0 {
        let record = Record { committed: true, at_ms: host.now_ms(), digest: digest.to_string() };
        enqueue(worker, Op::Commit { key: wire::key(&e.prefix, repository, tag), revision, record });
    }
}

/// Queues the release of our claim at `revision`.
pub fn release(host: &dyn Host, worker: &Worker, repository: &str, tag: &str, revision: u64) {
    let Some(e) = &worker.config.claims.etcd else { return };
    if revision != 0 {
        enqueue(worker, Op::Delete { key: wire::key(&e.prefix, repository, tag), revision, due_ms: host.now_ms() });
    }
}

/// Queues a put of `key` if it is absent, bound to `lease` (expired: etcd refuses, nothing to do).
pub fn create_later(worker: &Worker, key: String, value: Vec<u8>, lease: u64) {
    enqueue(worker, Op::Create { key, value, lease });
}

/// The root context's timer: grants the lease, keeps it alive, sends queued commits and
/// releases. All best effort: what fails here only leaves a record to expire.
pub fn tick(host: &dyn Host, worker: &Worker) {
    let Some(e) = &worker.config.claims.etcd else { return };
    let Ok(mut s) = worker.etcd.try_borrow_mut() else { return };
    let now = host.now_ms();
    let mut ops: Vec<Op> = Vec::new();
    if let Some(l) = s.lease.filter(|_| now >= s.keepalive_due_ms) {
        s.keepalive_due_ms = now + worker.config.claims.ttl_ms / 3;
        ops.push(Op::Keepalive(l));
    }
    for op in std::mem::take(&mut s.queue) {
        match op {
            Op::Delete { due_ms, .. } if due_ms > now => s.queue.push(op),
            op => ops.push(op),
        }
    }
    for op in ops {
        let (path, body) = match &op {
            Op::Keepalive(l) => ("/v3/lease/keepalive", wire::keepalive_body(*l)),
            Op::Commit { key, revision, record } => match s.lease {
                Some(l) => ("/v3/kv/txn", wire::put_if_txn(key, *revision, record, l)),
                None => continue, // no lease to bind it to: the claim record fences meanwhile
            },
            Op::Delete { key, revision, .. } => ("/v3/kv/txn", wire::delete_if_txn(key, *revision)),
            Op::Create { key, value, lease } => ("/v3/kv/txn", wire::create_txn(key, value, *lease)),
        };
        match call(host, e, path, &body) {
            Ok(token) => s.in_flight.push((token, op)),
            Err(why) => host.log(Level::Warn, &format!("immutable-tags: {}", down(e, &why))),
        }
    }
}

/// A call the root context sent answered.
pub fn on_root_response(host: &dyn Host, worker: &Worker, token: u32, body_size: usize) {
    let Some(e) = &worker.config.claims.etcd else { return };
    let Ok(mut s) = worker.etcd.try_borrow_mut() else { return };
    let Some(i) = s.in_flight.iter().position(|(t, _)| *t == token) else { return };
    let (_, op) = s.in_flight.swap_remove(i);
    let (status, body) = answer(host, body_size);
    let now = host.now_ms();
    let failed = |why: &str| host.log(Level::Warn, &format!("immutable-tags: {}", down(e, why)));
    match op {
        Op::Keepalive(l) => match wire::parse_keepalive(status, &body) {
            Answer::Ok(()) => {}
            Answer::LeaseGone => {
                host.log(Level::Warn, &format!("immutable-tags: etcd lease {l} expired; granting a new one"));
                if s.lease == Some(l) {
                    s.lease = None;
                }
            }
            Answer::Failed(why) => {
                failed(&why);
                s.keepalive_due_ms = now; // try again at the next tick
            }
        },
        Op::Commit { key, revision, .. } => {
            // The committed record (or, if the commit failed, the claim) goes one TTL later.
            let revision = match wire::parse_txn(status, &body) {
                Answer::Ok(Txn::Done { revision }) => revision,
                _ => revision,
            };
            s.queue.push(Op::Delete { key, revision, due_ms: now + worker.config.claims.ttl_ms });
        }
        Op::Delete { .. } | Op::Create { .. } => {
            if let Answer::Failed(why) = wire::parse_txn(status, &body) {
                failed(&why);
            }
        }
    }
}
