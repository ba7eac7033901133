//! Issue 22: etcd calls fail over within `claims.etcd.timeout_ms`. Each attempt gets
//! `attempt_timeout_ms`; a timed-out, refused or reset attempt, or one etcd answers with a
//! retryable error, is sent again (Envoy's round robin picks the next member), and a retried
//! claim whose earlier attempt was applied joins its own record: no conflict, one hold too many
//! (never too few: `tests_retry_safety`). Fake replicas, fake etcd, a registry that stores
//! whatever it is sent.
use super::fake::{answer, Call, Reply};
use crate::filter::host::Host;
use super::sequences::{deliver, reply, run_for, Stream, World, X};

/// timeout_ms 2000 (the issue's), so attempts of 500 ms: four fit.
const POLICY: &str = r#"{"upstream": {"cluster": "registry", "write_timeout_ms": 3000}, "global": {"immutable_tags": true},
  "claims": {"ttl_seconds": 10, "etcd": {"cluster": "etcd", "authority": "etcd.test", "timeout_ms": 2000}}}"#;
const KEY: &str = "/immutable-tags/app:v1";

/// Envoy's answer to a dispatched call that timed out.
fn timed_out() -> Reply {
    answer(504, &[], b"upstream request timeout")
}

/// Answers the stream's next call with `f(call)`; `false` if none is pending.
fn step(s: &mut Stream, mut f: impl FnMut(&Call) -> Reply) -> bool {
    let Some(token) = s.h.pending.borrow_mut().pop_front() else { return false };
    let call = s.h.call_of(token);
    let r = f(&call);
    deliver(s, token, r);
    true
}

/// A push of `body` to v1 through `r`, its etcd calls answered by `etcd(call, n)` (n: the
/// how-manieth etcd call of the stream), the registry's by the registry.
fn push_with(world: &World, r: &super::sequences::Replica, body: &[u8], mut etcd: impl FnMut(&Call, usize) -> Reply) -> Reply {
    let mut s = world.open_put(r, "v1", body, &[]);
    let mut n = 0;
    let mut answer = |c: &Call| {
        if c.cluster == "etcd" {
            n += 1;
            etcd(c, n)
        } else {
            world.reg.answer(c)
        }
    };
    while step(&mut s, &mut answer) {}
    world.body(&mut s, body, true);
    while step(&mut s, &mut answer) {}
    s.f.on_done(&s.h);
    reply(&s)
}

fn holders(world: &World) -> String {
    // The claimed digest and how many holds it has (take times, see `claims::Rec::encode`).
    let v = world.etcd.value(KEY).unwrap_or_default();
    let f: Vec<&str> = v.split(' ').skip(3).collect();
    match f.as_slice() {
        [d, n] => format!("{} {n}", d.split('@').next().unwrap_or(d)),
        _ => f.join(" "),
    }
}

#[test]
fn a_hung_member_costs_one_attempt_not_the_push() {
    let world = World::new(POLICY);
    let a = world.replica();
    let mut timeouts = Vec::new();
    let r = push_with(&world, &a, X, |c, n| {
        timeouts.push(c.timeout_ms);
        if n == 1 {
            world.advance(c.timeout_ms); // the hung member: nothing until the deadline
            return timed_out();
        }
        world.etcd.answer(c)
    });
    assert_eq!(r.status, 201);
    assert_eq!(timeouts, vec![500, 500], "a quarter of timeout_ms per attempt, the same call again");
    assert_eq!(world.reg.holds("v1"), Some(super::sequences::sha(X)));
    for (name, n) in [("etcd_attempt_timeouts", 1), ("etcd_attempts_retried", 1), ("etcd_failovers", 1), ("etcd_calls_failed", 0)] {
        assert_eq!(a.root.counter(name), n, "{name}");
    }
}

#[test]
fn attempts_stop_when_the_budget_is_spent_then_the_push_is_refused() {
    let world = World::new(POLICY);
    let a = world.replica();
    let start = a.root.now_ms();
    let mut timeouts = Vec::new();
    let r = push_with(&world, &a, X, |c, _| {
        timeouts.push(c.timeout_ms);
        world.advance(c.timeout_ms);
        timed_out()
    });
    assert_eq!(r.status, 503);
    assert!(r.json()["errors"][0]["message"].as_str().unwrap().contains("claim store (etcd, cluster 'etcd') is unavailable"), "{:?}", r.json());
    assert_eq!(timeouts, vec![500, 500, 500, 500], "MAX_ATTEMPTS, and the budget is spent");
    assert!(a.root.now_ms() - start <= 2000, "within timeout_ms");
    assert_eq!((a.root.counter("etcd_attempt_timeouts"), a.root.counter("etcd_calls_failed")), (4, 1));
    assert_eq!(world.reg.holds("v1"), None);
}

#[test]
fn a_retried_claim_whose_first_attempt_was_applied_is_no_conflict() {
    // The claim's create reaches etcd, its answer does not (a slow member: Envoy gives up on
    // it); the retry's compare fails on our own record, which it joins like any record of its
    // digest. Old code: 503 at the first 504.
    let world = World::new(POLICY);
    let a = world.replica();
    let r = push_with(&world, &a, X, |c, n| {
        let applied = world.etcd.answer(c);
        if n == 1 {
            return timed_out();
        }
        applied
    });
    assert_eq!(r.status, 201, "{:?}", r.json());
    run_for(&world, &[&a], 500);
    let x = super::sequences::sha(X);
    assert_eq!(holders(&world), format!("{x} 1"), "committed; the retry's extra hold waits for expiry");
    assert_eq!(a.root.counter("etcd_failovers"), 1);
    assert_eq!(world.push(&a, "v1", X, &[]).status, 201, "a re-push of X joins it");
    // A second push of another digest meets the committed change, not a phantom hold.
    let y = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","n":"y2"}"#;
    assert_eq!(world.push(&a, "v1", y, &[]).status, 409);
}

#[test]
fn a_retried_rewrite_whose_first_attempt_was_applied_is_no_conflict() {
    // The tag has a committed record of X: an identical re-push rewrites it (second txn,
    // compare on mod_revision). That rewrite is applied, its answer lost.
    let world = World::new(POLICY);
    let a = world.replica();
    assert_eq!(world.push(&a, "v1", X, &[]).status, 201);
    run_for(&world, &[&a], 500);
    assert_eq!(holders(&world), "- 0");
    let r = push_with(&world, &a, X, |c, n| {
        let applied = world.etcd.answer(c);
        if n == 2 {
            return timed_out();
        }
        applied
    });
    assert_eq!(r.status, 201, "{:?}", r.json());
    run_for(&world, &[&a], 500);
    assert_eq!(holders(&world), format!("{} 1", super::sequences::sha(X)), "one hold too many, never too few");
}

#[test]
fn another_replicas_record_is_no_own_write() {
    // Our attempt times out without reaching etcd; meanwhile another replica claims the tag
    // for another digest. The retry finds that record: a conflict, as ever.
    let world = World::new(POLICY);
    let (a, b) = (world.replica(), world.replica());
    let y = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","n":"y3"}"#;
    let mut s = world.open_put(&b, "v1", y, &[]);
    world.pump(&mut s, true);
    world.body(&mut s, y, true);
    world.pump(&mut s, true);
    assert_eq!(s.held_puts.len(), 1, "b holds the claim, its PUT out");
    let r = push_with(&world, &a, X, |c, n| if n == 1 { timed_out() } else { world.etcd.answer(c) });
    assert_eq!(r.status, 409);
    world.answer_put(&mut s);
    assert_eq!(world.reg.holds("v1"), Some(super::sequences::sha(y)));
}

#[test]
fn a_retried_commit_that_was_applied_drops_one_hold_only() {
    // Two pushes of X hold the claim (2 holders); the first commits, its rewrite is applied but
    // the answer lost. Old code read the record again and dropped a second hold, leaving the
    // other write in flight unfenced.
    let world = World::new(POLICY);
    let a = world.replica();
    let (mut s1, mut s2) = (world.open_put(&a, "v1", X, &[]), world.open_put(&a, "v1", X, &[]));
    for s in [&mut s1, &mut s2] {
        world.pump(s, true);
        world.body(s, X, true);
        world.pump(s, true);
        assert_eq!(s.held_puts.len(), 1);
    }
    assert_eq!(holders(&world), format!("{} 2", super::sequences::sha(X)));
    world.answer_put(&mut s1);
    // The root's commit: read, then the rewrite, which etcd applies and whose answer is lost.
    crate::filter::claims::etcd::tick(&a.root, &a.w);
    let mut n = 0;
    loop {
        let Some(token) = a.root.pending.borrow_mut().pop_front() else { break };
        let call = a.root.call_of(token);
        let mut reply = if call.cluster == "etcd" { world.etcd.answer(&call) } else { world.reg.answer(&call) };
        if call.header(":path") == Some("/v3/kv/txn") && call.body.as_deref().is_some_and(|b| b.windows(11).any(|w| w == b"request_put")) {
            n += 1;
            if n == 1 {
                reply = timed_out();
            }
        }
        let size = reply.body.len();
        a.root.set_answer(Some(reply));
        super::sequences::root_response(&a.root, &a.w, token, size);
        a.root.set_answer(None);
    }
    assert_eq!(n, 2, "the rewrite, and its retry");
    assert_eq!(holders(&world), format!("{} 1", super::sequences::sha(X)), "the second push still holds");
}

#[test]
fn etcds_retryable_errors_are_tried_again_and_others_are_not() {
    let retryable: [(u16, &[u8]); 5] = [
        (503, br#"{"error":"etcdserver: no leader","message":"etcdserver: no leader","code":14}"#),
        (503, br#"{"code":14,"message":"etcdserver: leader changed","details":[]}"#),
        (429, br#"{"error":"etcdserver: too many requests","message":"etcdserver: too many requests","code":8}"#),
        (200, br#"{"error":{"grpc_code":14,"http_code":503,"message":"etcdserver: no leader","http_status":"Service Unavailable"}}"#),
        (503, b"no healthy upstream"),
    ];
    for (status, body) in retryable {
        let world = World::new(POLICY);
        let a = world.replica();
        let r = push_with(&world, &a, X, |c, n| if n == 1 { answer(status, &[], body) } else { world.etcd.answer(c) });
        assert_eq!(r.status, 201, "{status} {}", String::from_utf8_lossy(body));
        assert_eq!(a.root.counter("etcd_attempts_retried"), 1);
    }
    // A reset (no headers at all).
    let world = World::new(POLICY);
    let a = world.replica();
    let reset = Reply { status: 0, headers: vec![], body: vec![] };
    assert_eq!(push_with(&world, &a, X, |c, n| if n == 1 { reset.clone() } else { world.etcd.answer(c) }).status, 201);
    assert_eq!(a.root.counter("etcd_attempt_resets"), 1);
    let final_: [(u16, &[u8]); 3] = [
        (400, br#"{"error":"etcdserver: duplicate key given in txn request","code":3}"#),
        (500, b"internal"),
        (200, b"<html>"),
    ];
    for (status, body) in final_ {
        let world = World::new(POLICY);
        let a = world.replica();
        let r = push_with(&world, &a, X, |c, n| if n == 1 { answer(status, &[], body) } else { world.etcd.answer(c) });
        assert_eq!(r.status, 503, "{status} {}", String::from_utf8_lossy(body));
        assert_eq!(a.root.counter("etcd_attempts_retried"), 0);
    }
}

#[test]
fn lease_grants_fail_over_too() {
    let world = World::new(POLICY);
    let a = world.replica(); // its first grant is answered
    let leases = world.etcd.leases.borrow().len();
    // Half a TTL on, the root grants a new lease; its first attempt times out.
    world.advance(5_000);
    crate::filter::claims::etcd::tick(&a.root, &a.w);
    let token = a.root.pending.borrow_mut().pop_front().unwrap();
    assert_eq!(a.root.call_of(token).header(":path"), Some("/v3/lease/grant"));
    assert_eq!(a.root.call_of(token).timeout_ms, 500);
    a.root.set_answer(Some(timed_out()));
    super::sequences::root_response(&a.root, &a.w, token, 24);
    a.root.set_answer(None);
    world.answer_root(&a);
    assert_eq!(world.etcd.leases.borrow().len(), leases + 1, "granted by the retry");
    assert_eq!(a.root.counter("etcd_failovers"), 1);
    // Pushes go on with it.
    world.advance(5_500);
    assert_eq!(world.push(&a, "v1", X, &[]).status, 201);
}

#[test]
fn the_same_record_under_another_lease_is_no_own_write() {
    // Two replicas push X to v1 in the same millisecond: b's claim lands, a's first attempt
    // times out before etcd. a's retry finds a record equal to its own but bound to b's lease:
    // b's hold, so a takes a second one (counting it as its own would leave b's write unfenced
    // once a commits).
    let world = World::new(POLICY);
    let (a, b) = (world.replica(), world.replica());
    let mut s = world.open_put(&b, "v1", X, &[]);
    world.pump(&mut s, true);
    world.body(&mut s, X, true);
    world.pump(&mut s, true);
    assert_eq!(s.held_puts.len(), 1, "b holds the claim, its PUT out");
    let r = push_with(&world, &a, X, |c, n| if n == 1 { timed_out() } else { world.etcd.answer(c) });
    assert_eq!(r.status, 201);
    run_for(&world, &[&a], 500);
    assert_eq!(holders(&world), format!("{} 1", super::sequences::sha(X)), "b's hold outlives a's commit");
}
