//! Claims in etcd (`claims.etcd`): the same record and rule as shared data ([`crate::store::claims`]),
//! kept where every Envoy replica sees them. Encoding: [`crate::store::etcd`].
//!
//! - A claim is one txn (create the key if absent, else read it back): one round trip before
//!   the PUT goes upstream. A record found is judged by `claims::take` and, if the push may
//!   hold it, rewritten with a second txn that compares its `mod_revision` (so holders are
//!   counted, as in shared data).
//! - An answer is trusted only while it is young: a claim whose round trips took half the TTL
//!   or more (a paused replica, a slow etcd) is refused, and what it took is given back.
//! - A record lives as long as its key: no replica's clock judges it (clocks disagree).
//! - Records are not bound to their writer's life: every write uses the worker's current
//!   lease, granted with twice the TTL and replaced every half TTL, never kept alive. So a
//!   record lives at least one TTL past its last write whatever happens to its replica (a
//!   committed change outlives every view that predates it), and at most two TTLs (nothing
//!   lingers: a push whose answer never came leaves its key for two TTLs at most).
//! - Commit and release go through the root context's queue: they never delay the client,
//!   and read, judge and rewrite the record (compare on `mod_revision`), so a release by one
//!   holder never removes what another holder or a committed change needs.
//!   The queue also puts back break-glass windows ([`filter::break_glass::window`](crate::filter::break_glass::window)) a failed write had used.
//! - Every call (claim, commit, release, lease grant, window) is a [`Call`]: attempts of at most
//!   `attempt_timeout_ms` each, sent again while `timeout_ms` lasts when one times out, is
//!   refused or etcd answers a retryable error. Envoy's round robin sends the next attempt to
//!   the next member, and outlier detection ejects a hung one. Every write is a txn guarded by
//!   a compare (create if absent, or `mod_revision`), so an attempt that lands late or twice
//!   writes nothing more. A retry cannot tell our own write from an identical one (one worker,
//!   one digest, one millisecond), so it never counts a hold too few: a retried claim judges
//!   what it finds like any record (our own: one hold more), and a commit or release some
//!   attempt of which may have been applied is never applied again. At worst a hold too many
//!   waits for the record's expiry (fail closed), as if its replica had died.
//! - Order: a view's order is the highest cluster revision the worker had seen (any answer's
//!   `header.revision`) before its HEAD was sent; a committed change's is the revision of the
//!   write that committed it. Any answer's revision is a lower bound of the cluster's from then
//!   on, so a view's order is at most the revision the cluster had when its HEAD went out: a
//!   change committed after that has a larger revision and refuses the view. An order that
//!   lags (a worker that had heard little from etcd) can only make a view look older than it
//!   is, never newer: a spurious refusal, never a wrong grant, and the refused claim's answer
//!   raises the worker's order, so the client's retry passes.
use super::Claimed;
use crate::config::EtcdSettings;
use crate::filter::host::{Host, Level};
use crate::filter::worker::Worker;
use crate::observability::metrics::Counter;
use crate::store::claims::{self, Rec, View};
use crate::store::etcd::{self as wire, Answer, Txn};

/// Calls one claim may make (grant, claim, rewrite, retries) before it gives up.
const MAX_STEPS: u32 = 6;

/// Tries of a queued commit or release before it is left to expire.
const MAX_TRIES: u32 = 8;

/// Attempts of one call at most (as many as the default `attempt_timeout_ms`, a quarter of the
/// budget, allows): quick failures (refused, no leader) stop here, before the budget is spent.
pub(crate) const MAX_ATTEMPTS: u32 = 4;

/// Why an attempt failed in a way another member may not: it is tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// Envoy's 504: no answer within the attempt's deadline (a hung or slow member).
    Timeout,
    /// Envoy's own 503: it could not connect (or no member is healthy).
    Refused,
    Reset,
    /// etcd's retryable errors: no leader, leader changed (gRPC Unavailable, the gateway's 503),
    /// too many requests (ResourceExhausted: 429), and the gateway's 504 (DeadlineExceeded).
    Unavailable,
}

fn fault(status: Option<u16>, body: &[u8]) -> Option<Fault> {
    let etcd = body.starts_with(b"{");
    let says = |m: &str| body.windows(m.len()).any(|w| w == m.as_bytes());
    match status {
        None => Some(Fault::Reset),
        Some(504) if !etcd => Some(Fault::Timeout),
        Some(503) if !etcd => Some(Fault::Refused),
        Some(429 | 503 | 504) => Some(Fault::Unavailable),
        // A stream's error travels in a 200 (`{"error":{...}}`): its message says it.
        _ if etcd && ["no leader", "leader changed", "too many requests"].iter().any(|m| says(m)) => {
            Some(Fault::Unavailable)
        }
        _ => None,
    }
}

/// One etcd call and its attempts. Each attempt has `attempt_timeout_ms` (less what is left of
/// `timeout_ms`, counted from the first); the body is sent again unchanged, and its compare
/// keeps a late or second attempt from writing twice.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Call {
    pub token: u32,
    path: &'static str,
    body: String,
    started_ms: u64,
    attempts: u32,
}

impl Call {
    pub(crate) fn send(
        host: &dyn Host,
        e: &EtcdSettings,
        path: &'static str,
        body: String,
    ) -> Result<Call, String> {
        let token = call(host, e, path, &body, e.attempt_timeout_ms)?;
        Ok(Call { token, path, body, started_ms: host.now_ms(), attempts: 1 })
    }

    /// The answer (status, body); `None`: an attempt failed and was sent again, wait for that.
    pub(crate) fn answer(
        &mut self,
        host: &dyn Host,
        worker: &Worker,
        e: &EtcdSettings,
        body_size: usize,
    ) -> Option<(Option<u16>, Vec<u8>)> {
        let (status, body) = answer(host, body_size);
        let Some(f) = fault(status, &body) else {
            if self.attempts > 1 {
                worker.count(host, Counter::EtcdFailovers);
            }
            return Some((status, body));
        };
        worker.count(
            host,
            match f {
                Fault::Timeout => Counter::EtcdAttemptTimeouts,
                Fault::Refused => Counter::EtcdAttemptsRefused,
                Fault::Reset => Counter::EtcdAttemptResets,
                Fault::Unavailable => Counter::EtcdAttemptsUnavailable,
            },
        );
        // A last attempt shorter than a quarter of one is not worth sending.
        let left = e.timeout_ms.saturating_sub(host.now_ms().saturating_sub(self.started_ms));
        if self.attempts < MAX_ATTEMPTS && left.saturating_mul(4) >= e.attempt_timeout_ms {
            if let Ok(token) = call(host, e, self.path, &self.body, left.min(e.attempt_timeout_ms)) {
                (self.token, self.attempts) = (token, self.attempts + 1);
                worker.count(host, Counter::EtcdAttemptsRetried);
                return None;
            }
        }
        worker.count(host, Counter::EtcdCallsFailed);
        Some((status, body))
    }

    /// An earlier attempt may have been applied (it failed after it was sent).
    fn retried(&self) -> bool {
        self.attempts > 1
    }
}

/// A claim waiting for etcd's answer to the call `token`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InFlight {
    pub token: u32,
    key: String,
    digest: String,
    view: View,
    step: Step,
    steps: u32,
    call: Box<Call>,
    /// When the claim's first call was sent: its answers are only trusted while young.
    sent_ms: u64,
    /// The take time of the hold the claim's last txn writes (`claims::take`).
    at_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Grant,
    Claim,
    /// Rewrite the record found at this `mod_revision` as this.
    Write(u64, Rec),
}

/// What happens to a record after the registry answered.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Change {
    /// `held`: the take time of the write's hold, which it removes (`claims::take`).
    Commit {
        digest: String,
        at_ms: u64,
        held: u64,
    },
    Release {
        digest: String,
        held: u64,
    },
    /// A delete the filter granted went through.
    Deleted {
        at_ms: u64,
        before: u64,
        digest: Option<String>,
    },
}

/// What the root context sends (it outlives the streams).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    /// A new lease, asked for at this time.
    Grant(u64),
    /// Read the record (`None`), or rewrite it at a `mod_revision` (`Some`; `None` record:
    /// delete it), then apply `change` again to what is found.
    Update { key: String, change: Change, write: Option<(u64, Option<Rec>)>, tries: u32 },
    /// A txn of its own (a window put back), sent once: its compare makes it exact.
    Put(String),
}

/// Per worker: the current lease (id, when its grant was sent) and the root context's queue.
#[derive(Debug, Default)]
pub struct State {
    lease: Option<(u64, u64)>,
    /// The highest cluster revision an answer carried: the order of a view taken now.
    seen: u64,
    granting: bool,
    queue: Vec<Op>,
    in_flight: Vec<(Call, Op)>,
}

/// How often the root context ticks: commits and releases wait at most this long.
pub const TICK_MS: u64 = 250;

fn down(e: &EtcdSettings, why: &str) -> String {
    format!("the claim store (etcd, cluster '{}') is unavailable: {why}", e.cluster)
}

fn call(host: &dyn Host, e: &EtcdSettings, path: &str, body: &str, timeout_ms: u64) -> Result<u32, String> {
    let headers = [
        (":method", "POST"),
        (":path", path),
        (":authority", e.authority.as_str()),
        ("content-type", "application/json"),
    ];
    host.dispatch(&e.cluster, &headers, Some(body.as_bytes()), timeout_ms)
        .map_err(|why| format!("cannot dispatch to cluster '{}' ({why})", e.cluster))
}

/// The lease to bind a write to now: one granted less than a TTL ago (it has a TTL to go).
fn lease(host: &dyn Host, worker: &Worker) -> Option<u64> {
    let ttl = worker.config.claims.ttl_ms;
    let s = worker.pending.etcd.try_borrow().ok()?;
    s.lease.filter(|(_, at)| at.saturating_add(ttl) > host.now_ms()).map(|(id, _)| id)
}

/// Leases last two TTLs, in whole seconds.
fn lease_seconds(worker: &Worker) -> u64 {
    (2 * worker.config.claims.ttl_ms).div_ceil(1000)
}

fn learn_lease(worker: &Worker, id: u64, sent_ms: u64) {
    if let Ok(mut s) = worker.pending.etcd.try_borrow_mut() {
        if s.lease.map_or(true, |(_, at)| at <= sent_ms) {
            s.lease = Some((id, sent_ms));
        }
    }
}

/// The order of a view taken now (see the module doc). 0 (older than every change) if busy.
pub fn seen(worker: &Worker) -> u64 {
    worker.pending.etcd.try_borrow().map_or(0, |s| s.seen)
}

fn learn_revision(s: &mut State, body: &[u8]) {
    if let Some(r) = wire::header_revision(body) {
        s.seen = s.seen.max(r);
    }
}

pub fn claim(
    host: &dyn Host,
    worker: &Worker,
    repository: &str,
    tag: &str,
    digest: &str,
    view: View,
) -> Claimed {
    let Some(e) = &worker.config.claims.etcd else {
        return Claimed::Unavailable("no etcd configured".into());
    };
    let key = wire::key(&e.prefix, repository, tag);
    let f = InFlight {
        token: 0,
        key,
        digest: digest.to_string(),
        view,
        step: Step::Claim,
        steps: 0,
        call: Box::default(),
        sent_ms: host.now_ms(),
        at_ms: 0,
    };
    send(host, worker, e, f)
}

/// Sends the claim's next call; without a lease, grants one first.
fn send(host: &dyn Host, worker: &Worker, e: &EtcdSettings, mut f: InFlight) -> Claimed {
    f.steps += 1;
    if f.steps > MAX_STEPS {
        return Claimed::Unavailable(down(e, "the claim did not settle"));
    }
    let now = host.now_ms();
    let (path, body) = match (lease(host, worker), &f.step) {
        (None, _) => {
            f.step = Step::Grant;
            ("/v3/lease/grant", wire::grant_body(lease_seconds(worker)))
        }
        (Some(l), Step::Grant | Step::Claim) => {
            f.step = Step::Claim;
            f.at_ms = now;
            let ttl = worker.config.claims.ttl_ms;
            let first = claims::take(None, &f.digest, f.view, now, ttl).unwrap_or(Rec {
                stored: None,
                claim: None,
                at_ms: now,
            });
            ("/v3/kv/txn", wire::claim_txn(&f.key, &first, l))
        }
        (Some(l), Step::Write(m, r)) => ("/v3/kv/txn", wire::put_if_txn(&f.key, *m, r, l)),
    };
    let body = match (&f.step, f.key.rsplit_once(':')) {
        (Step::Grant, _) | (_, None) => body,
        // A fence reads the repository's claims (`<head>:` up to `<head>;`), a claim its fence.
        (_, Some((head, tag))) => {
            let (from, end) = match tag.starts_with('@') {
                true => (format!("{head}:"), format!("{head};")),
                false => (format!("{head}:{}", super::fence_tag(&f.digest)), String::new()),
            };
            let end = if end.is_empty() { format!("{from}\0") } else { end };
            wire::and_read(&body, &from, &end)
        }
    };
    match Call::send(host, e, path, body) {
        Ok(call) => {
            (f.token, f.call) = (call.token, Box::new(call));
            Claimed::Pending(f)
        }
        Err(why) => Claimed::Unavailable(down(e, &why)),
    }
}

/// The call's status and body; `None` status: a reset.
fn answer(host: &dyn Host, body_size: usize) -> (Option<u16>, Vec<u8>) {
    let status = host.call_response_header(":status").and_then(|s| s.trim().parse().ok());
    (status, host.call_response_body(body_size).unwrap_or_default())
}

pub fn on_response(host: &dyn Host, worker: &Worker, mut f: InFlight, body_size: usize) -> Claimed {
    let Some(e) = &worker.config.claims.etcd else {
        return Claimed::Unavailable("no etcd configured".into());
    };
    let Some((status, body)) = f.call.answer(host, worker, e, body_size) else {
        f.token = f.call.token;
        return Claimed::Pending(f);
    };
    if let Ok(mut s) = worker.pending.etcd.try_borrow_mut() {
        learn_revision(&mut s, &body);
    }
    let now = host.now_ms();
    let ttl_ms = worker.config.claims.ttl_ms;
    let too_late = now.saturating_sub(f.sent_ms) >= ttl_ms / 2;
    if too_late {
        // Whatever etcd says is too old to act on; if it granted the claim, give it back.
        if let Answer::Ok(Txn::Done { .. }) = wire::parse_txn(status, &body) {
            let change = Change::Release { digest: f.digest.clone(), held: f.at_ms };
            enqueue(worker, Op::Update { key: f.key.clone(), change, write: None, tries: 0 });
        }
        return Claimed::Unavailable(down(
            e,
            "its answer came too late (half of claims.ttl_seconds or more)",
        ));
    }
    if f.step == Step::Grant {
        return match wire::parse_grant(status, &body) {
            Answer::Ok(id) => {
                learn_lease(worker, id, f.sent_ms);
                f.step = Step::Claim;
                send(host, worker, e, f)
            }
            Answer::LeaseGone => Claimed::Unavailable(down(e, "no lease granted")),
            Answer::Failed(why) => Claimed::Unavailable(down(e, &why)),
        };
    }
    match wire::parse_txn(status, &body) {
        Answer::Ok(Txn::Done { revision }) => fenced(worker, &f, &body, revision),
        Answer::Ok(Txn::Found(None)) => {
            // Gone between compare and read: claim again.
            f.step = Step::Claim;
            send(host, worker, e, f)
        }
        // Also after a retry whose earlier attempt wrote it: our own record is then joined, one
        // hold too many (an identical record of another push must never pass for ours).
        Answer::Ok(Txn::Found(Some((record, mod_revision)))) => {
            // Live while it exists: its lease (etcd's clock) ends it, never this replica's
            // clock, which may run ahead of its writer's (skew) and end it early.
            match claims::take(Some(&record), &f.digest, f.view, now, ttl_ms) {
                Err(Some((digest, committed))) => Claimed::Conflict { digest, committed },
                Err(None) => Claimed::Unavailable(down(e, "too many pushes of this tag in flight")),
                Ok(r) => {
                    (f.step, f.at_ms) = (Step::Write(mod_revision, r), now);
                    send(host, worker, e, f)
                }
            }
        }
        Answer::LeaseGone => {
            // Gone (e.g. etcd was out of reach): grant a new one and claim again.
            if let Ok(mut s) = worker.pending.etcd.try_borrow_mut() {
                s.lease = None;
            }
            f.step = Step::Claim;
            send(host, worker, e, f)
        }
        Answer::Failed(why) => Claimed::Unavailable(down(e, &why)),
    }
}

/// A granted claim, judged by what its txn read (`super::fence_tag`): a push's claim is given
/// back if a delete of its digest holds the fence; a fence, if any push of the digest holds a
/// claim in the repository.
fn fenced(worker: &Worker, f: &InFlight, body: &[u8], revision: u64) -> Claimed {
    let held = wire::read_holds(body, &f.key, &f.digest);
    if held == Some(false) {
        return Claimed::Proceed { revision, at_ms: f.at_ms };
    }
    enqueue(
        worker,
        Op::Update {
            key: f.key.clone(),
            change: Change::Release { digest: f.digest.clone(), held: f.at_ms },
            write: None,
            tries: 0,
        },
    );
    held.map_or_else(
        || Claimed::Unavailable("the claim store's answer is unreadable".into()),
        |_| Claimed::Fenced,
    )
}

fn enqueue(worker: &Worker, op: Op) {
    if let Ok(mut s) = worker.pending.etcd.try_borrow_mut() {
        s.queue.push(op);
    }
}

/// Queues the commit of `digest` (the registry stored it).
pub fn commit(host: &dyn Host, worker: &Worker, repository: &str, tag: &str, digest: &str, held: u64) {
    let Some(e) = &worker.config.claims.etcd else { return };
    let change = Change::Commit { digest: digest.to_string(), at_ms: host.now_ms(), held };
    enqueue(worker, Op::Update { key: wire::key(&e.prefix, repository, tag), change, write: None, tries: 0 });
}

/// Queues the release of our hold on `digest`.
pub fn release(worker: &Worker, repository: &str, tag: &str, digest: &str, held: u64) {
    let Some(e) = &worker.config.claims.etcd else { return };
    let change = Change::Release { digest: digest.to_string(), held };
    enqueue(worker, Op::Update { key: wire::key(&e.prefix, repository, tag), change, write: None, tries: 0 });
}

/// Queues the forgetting of the tag's committed change (a delete the filter granted).
pub fn forget(
    host: &dyn Host,
    worker: &Worker,
    repository: &str,
    tag: &str,
    before: u64,
    digest: Option<&str>,
) {
    let Some(e) = &worker.config.claims.etcd else { return };
    let change = Change::Deleted { at_ms: host.now_ms(), before, digest: digest.map(str::to_string) };
    enqueue(worker, Op::Update { key: wire::key(&e.prefix, repository, tag), change, write: None, tries: 0 });
}

/// Queues the txn `body` (a lease expired meanwhile: etcd refuses, nothing to do).
pub fn put_later(worker: &Worker, body: String) {
    enqueue(worker, Op::Put(body));
}

/// The root context's timer: keeps a fresh lease, sends queued commits and releases. What
/// fails here is tried again at the next tick, a few times, then left to expire.
pub fn tick(host: &dyn Host, worker: &Worker) {
    let Some(e) = &worker.config.claims.etcd else { return };
    let Ok(mut s) = worker.pending.etcd.try_borrow_mut() else { return };
    let now = host.now_ms();
    let ttl = worker.config.claims.ttl_ms;
    let mut ops: Vec<Op> = std::mem::take(&mut s.queue);
    // A new lease every half TTL, so that one with more than a TTL to go is always at hand.
    if !s.granting && s.lease.map_or(true, |(_, at)| at.saturating_add(ttl / 2) <= now) {
        s.granting = true;
        ops.insert(0, Op::Grant(now));
    }
    for op in ops {
        send_op(host, worker, e, &mut s, op, now);
    }
}

/// Sends one of the root's calls (or queues it again: no lease to bind a write to yet).
fn send_op(host: &dyn Host, worker: &Worker, e: &EtcdSettings, s: &mut State, op: Op, now: u64) {
    let ttl = worker.config.claims.ttl_ms;
    let current = s.lease.filter(|(_, at)| at.saturating_add(ttl) > now).map(|(id, _)| id);
    {
        let (path, body): (&'static str, String) = match &op {
            Op::Grant(_) => ("/v3/lease/grant", wire::grant_body(lease_seconds(worker))),
            Op::Update { key, write: None, .. } => ("/v3/kv/txn", wire::read_txn(key)),
            Op::Update { key, write: Some((m, None)), .. } => ("/v3/kv/txn", wire::delete_if_txn(key, *m)),
            Op::Update { key, write: Some((m, Some(r))), .. } => match current {
                Some(l) if *m == 0 => ("/v3/kv/txn", wire::create_txn(key, r.encode().as_bytes(), l)),
                Some(l) => ("/v3/kv/txn", wire::put_if_txn(key, *m, r, l)),
                None => {
                    s.queue.push(op); // once a lease is granted
                    return;
                }
            },
            Op::Put(body) => ("/v3/kv/txn", body.clone()),
        };
        match Call::send(host, e, path, body) {
            Ok(call) => s.in_flight.push((call, op)),
            Err(why) => {
                host.log(Level::Warn, &format!("immutable-tags: {}", down(e, &why)));
                if matches!(op, Op::Grant(_)) {
                    s.granting = false;
                } else {
                    retry(s, op);
                }
            }
        }
    }
}

/// Puts a failed update back in the queue, unless it was tried enough (it then expires).
fn retry(s: &mut State, op: Op) {
    if let Op::Update { key, change, tries, .. } = op {
        if tries + 1 < MAX_TRIES {
            s.queue.push(Op::Update { key, change, write: None, tries: tries + 1 });
        }
    }
}

/// A call the root context sent answered.
pub fn on_root_response(host: &dyn Host, worker: &Worker, token: u32, body_size: usize) {
    let Some(e) = &worker.config.claims.etcd else { return };
    let Ok(mut s) = worker.pending.etcd.try_borrow_mut() else { return };
    let Some(i) = s.in_flight.iter().position(|(c, _)| c.token == token) else { return };
    let (mut call, op) = s.in_flight.swap_remove(i);
    let Some((status, body)) = call.answer(host, worker, e, body_size) else {
        s.in_flight.push((call, op));
        return;
    };
    learn_revision(&mut s, &body);
    let (now, ttl) = (host.now_ms(), worker.config.claims.ttl_ms);
    let failed = |why: &str| host.log(Level::Warn, &format!("immutable-tags: {}", down(e, why)));
    match op {
        Op::Grant(sent_ms) => {
            s.granting = false;
            match wire::parse_grant(status, &body) {
                // Its TTL is counted from when it was asked for (etcd's count starts later).
                Answer::Ok(id) => s.lease = Some((id, sent_ms)),
                Answer::LeaseGone => failed("no lease granted"),
                Answer::Failed(why) => failed(&why),
            }
        }
        Op::Update { key, change, write, tries } => {
            let found = match wire::parse_txn(status, &body) {
                Answer::Ok(Txn::Done { .. }) if write.is_some() => return,
                // A write an earlier attempt of which may have been applied is not applied again
                // (a second release would take another push's hold): one hold too many at worst.
                Answer::Ok(Txn::Found(_)) | Answer::LeaseGone if write.is_some() && call.retried() => return,
                Answer::Ok(Txn::Done { .. }) => None, // read: the key does not exist
                Answer::Ok(Txn::Found(f)) => f,
                Answer::LeaseGone => {
                    s.lease = None;
                    return retry(&mut s, Op::Update { key, change, write, tries });
                }
                Answer::Failed(why) => {
                    failed(&why);
                    // A failed write may have been applied: likewise.
                    if write.is_none() {
                        retry(&mut s, Op::Update { key, change, write, tries });
                    }
                    return;
                }
            };
            let live = found.as_ref(); // see `on_response`: records end by their lease
            let m = found.as_ref().map_or(0, |(_, m)| *m);
            let next = match &change {
                // Order 0: the revision this write gets (see `crate::store::etcd`).
                // A commit of no hold (audit mode) is only trusted while young: see `committed`.
                Change::Commit { held: claims::NO_HOLD, at_ms, .. }
                    if now.saturating_sub(*at_ms) >= ttl / 2 =>
                {
                    None
                }
                Change::Commit { digest, at_ms, held } => {
                    claims::committed(live.map(|(r, _)| r), digest, 0, *held, *at_ms, ttl).map(Some)
                }
                Change::Release { digest, held } => {
                    live.and_then(|(r, _)| claims::released(r, digest, *held, now, ttl))
                }
                Change::Deleted { at_ms, before, digest } => {
                    live.and_then(|(r, _)| claims::deleted(r, *before, digest.as_deref(), *at_ms))
                }
            };
            if let Some(next) = next {
                if tries + 1 < MAX_TRIES {
                    send_op(
                        host,
                        worker,
                        e,
                        &mut s,
                        Op::Update { key, change, write: Some((m, next)), tries: tries + 1 },
                        now,
                    );
                }
            }
        }
        Op::Put(_) => {
            if let Answer::Failed(why) = wire::parse_written(status, &body) {
                failed(&why);
            }
        }
    }
}
