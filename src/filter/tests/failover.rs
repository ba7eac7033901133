//! Issue 22: etcd calls fail over within `claims.etcd.timeout_ms`. Each attempt gets
//! `attempt_timeout_ms`; a timed-out, refused or reset attempt, or one etcd answers with a
//! retryable error, is sent again (Envoy's round robin picks the next member), and a retried
//! claim whose earlier attempt was applied joins its own record: no conflict, one hold too many
//! (never too few: the retry section below). Fake replicas, fake etcd, a registry that stores
//! whatever it is sent.
use super::fake::{answer, Call, Reply};
use super::world::{
    deliver, reply, root_response, run_for, sha, Replica, Stream, World, ADMIN, ETCD_BG, REASON, X, Y,
};
use crate::filter::host::Host;

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
fn push_with(
    world: &World,
    r: &super::world::Replica,
    body: &[u8],
    mut etcd: impl FnMut(&Call, usize) -> Reply,
) -> Reply {
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
    assert_eq!(world.reg.holds("v1"), Some(super::world::sha(X)));
    for (name, n) in [
        ("etcd_attempt_timeouts", 1),
        ("etcd_attempts_retried", 1),
        ("etcd_failovers", 1),
        ("etcd_calls_failed", 0),
    ] {
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
    assert!(
        r.json()["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("claim store (etcd, cluster 'etcd') is unavailable"),
        "{:?}",
        r.json()
    );
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
    let x = super::world::sha(X);
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
    assert_eq!(holders(&world), format!("{} 1", super::world::sha(X)), "one hold too many, never too few");
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
    assert_eq!(world.reg.holds("v1"), Some(super::world::sha(y)));
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
    assert_eq!(holders(&world), format!("{} 2", super::world::sha(X)));
    world.answer_put(&mut s1);
    // The root's commit: read, then the rewrite, which etcd applies and whose answer is lost.
    crate::filter::claims::etcd::tick(&a.root, &a.w);
    let mut n = 0;
    loop {
        let Some(token) = a.root.pending.borrow_mut().pop_front() else { break };
        let call = a.root.call_of(token);
        let mut reply =
            if call.cluster == "etcd" { world.etcd.answer(&call) } else { world.reg.answer(&call) };
        if call.header(":path") == Some("/v3/kv/txn")
            && call.body.as_deref().is_some_and(|b| b.windows(11).any(|w| w == b"request_put"))
        {
            n += 1;
            if n == 1 {
                reply = timed_out();
            }
        }
        let size = reply.body.len();
        a.root.set_answer(Some(reply));
        super::world::root_response(&a.root, &a.w, token, size);
        a.root.set_answer(None);
    }
    assert_eq!(n, 2, "the rewrite, and its retry");
    assert_eq!(holders(&world), format!("{} 1", super::world::sha(X)), "the second push still holds");
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
        let r =
            push_with(
                &world,
                &a,
                X,
                |c, n| if n == 1 { answer(status, &[], body) } else { world.etcd.answer(c) },
            );
        assert_eq!(r.status, 201, "{status} {}", String::from_utf8_lossy(body));
        assert_eq!(a.root.counter("etcd_attempts_retried"), 1);
    }
    // A reset (no headers at all).
    let world = World::new(POLICY);
    let a = world.replica();
    let reset = Reply { status: 0, headers: vec![], body: vec![] };
    assert_eq!(
        push_with(&world, &a, X, |c, n| if n == 1 { reset.clone() } else { world.etcd.answer(c) }).status,
        201
    );
    assert_eq!(a.root.counter("etcd_attempt_resets"), 1);
    let final_: [(u16, &[u8]); 3] = [
        (400, br#"{"error":"etcdserver: duplicate key given in txn request","code":3}"#),
        (500, b"internal"),
        (200, b"<html>"),
    ];
    for (status, body) in final_ {
        let world = World::new(POLICY);
        let a = world.replica();
        let r =
            push_with(
                &world,
                &a,
                X,
                |c, n| if n == 1 { answer(status, &[], body) } else { world.etcd.answer(c) },
            );
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
    super::world::root_response(&a.root, &a.w, token, 24);
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
    assert_eq!(holders(&world), format!("{} 1", super::world::sha(X)), "b's hold outlives a's commit");
}

// ---- Retries never undercount holds, nor bring back a used break-glass window. A retried etcd
// attempt may find a write it cannot tell from its own (the same bytes, the same lease), or
// land late, after its answer was given up on. Holds may be counted too often (the tag then
// waits for its record's expiry: fail closed), never too seldom; a window serves one override.

fn is_write(c: &Call) -> bool {
    c.body.as_deref().is_some_and(|b| b.windows(11).any(|w| w == b"request_put" || w == b"request_del"))
}

/// Answers the stream's calls up to its held PUT, etcd's by `etcd(call, n)` (n: the
/// how-manieth etcd call), the registry's HEADs by the registry.
fn to_put(world: &World, s: &mut Stream, body: &[u8], mut etcd: impl FnMut(&Call, usize) -> Reply) {
    let mut n = 0;
    for part in [None, Some(body)] {
        if let Some(b) = part {
            world.body(s, b, true);
        }
        loop {
            let Some(token) = s.h.pending.borrow_mut().pop_front() else { break };
            let call = s.h.call_of(token);
            if call.header(":method") == Some("PUT") {
                s.held_puts.push(token);
                continue;
            }
            let reply = if call.cluster == "etcd" {
                n += 1;
                etcd(&call, n)
            } else {
                world.reg.answer(&call)
            };
            deliver(s, token, reply);
        }
    }
    assert_eq!(s.held_puts.len(), 1, "let through, its PUT out");
}

/// The root's queued commits and releases, its etcd writes answered by `write(call, n)`.
fn root(world: &World, r: &Replica, mut write: impl FnMut(&Call, usize) -> Reply) {
    crate::filter::claims::etcd::tick(&r.root, &r.w);
    let mut n = 0;
    loop {
        let Some(token) = r.root.pending.borrow_mut().pop_front() else { break };
        let call = r.root.call_of(token);
        let reply = match call.cluster.as_str() {
            "etcd" if is_write(&call) => {
                n += 1;
                write(&call, n)
            }
            "etcd" => world.etcd.answer(&call),
            _ => world.reg.answer(&call),
        };
        let size = reply.body.len();
        r.root.set_answer(Some(reply));
        root_response(&r.root, &r.w, token, size);
        r.root.set_answer(None);
    }
}

/// The registry refuses `s`'s PUT (a 4xx: not stored): its hold is released.
fn fail_put(s: &mut Stream) {
    let token = s.held_puts.remove(0);
    deliver(s, token, answer(400, &[], br#"{"errors":[{"code":"MANIFEST_BLOB_UNKNOWN"}]}"#));
}

#[test]
fn a_retried_claim_does_not_take_another_pushs_identical_record_for_its_own() {
    // Two pushes of X to v1 through one worker in the same millisecond: the second's claim is
    // lost before etcd applies it; its retry finds the first's record, byte for byte what it
    // writes, under the same lease. Old code took it as its own write: two pushes, one hold.
    let world = World::new(POLICY);
    let (a, b) = (world.replica(), world.replica());
    let (mut s1, mut s2) = (world.open_put(&a, "v1", X, &[]), world.open_put(&a, "v1", X, &[]));
    to_put(&world, &mut s1, X, |c, _| world.etcd.answer(c));
    to_put(&world, &mut s2, X, |c, n| if n == 1 { timed_out() } else { world.etcd.answer(c) });
    assert_eq!(holders(&world), format!("{} 2", sha(X)), "both pushes hold");
    // The first write fails: its release must not free the tag while the second is out.
    fail_put(&mut s1);
    run_for(&world, &[&a, &b], 500);
    assert_eq!(world.push(&b, "v1", Y, &[]).status, 409, "Y meets the second push's hold");
    world.answer_put(&mut s2);
    assert_eq!(world.reg.history.borrow().iter().filter(|(t, _)| t == "v1").count(), 1, "one digest stored");
}

#[test]
fn a_retried_release_that_was_applied_is_not_applied_again() {
    // X held twice; the first write fails and its release (X 2 -> X 1) is applied, its answer
    // lost; a third push of X joins before the retry, which finds X 2. Old code took that as
    // "not applied", read again and released again: three pushes, X 1.
    let world = World::new(POLICY);
    let a = world.replica();
    let (mut s1, mut s2, mut s3) = (
        world.open_put(&a, "v1", X, &[]),
        world.open_put(&a, "v1", X, &[]),
        world.open_put(&a, "v1", X, &[]),
    );
    to_put(&world, &mut s1, X, |c, _| world.etcd.answer(c));
    to_put(&world, &mut s2, X, |c, _| world.etcd.answer(c));
    fail_put(&mut s1);
    let mut joined = false;
    root(&world, &a, |c, n| {
        let applied = world.etcd.answer(c);
        if n == 1 {
            to_put(&world, &mut s3, X, |c, _| world.etcd.answer(c));
            joined = true;
            return timed_out();
        }
        applied
    });
    assert!(joined);
    run_for(&world, &[&a], 500);
    assert_eq!(holders(&world), format!("{} 2", sha(X)), "s2 and s3 hold");
    for s in [&mut s2, &mut s3] {
        assert_eq!(s.held_puts.len(), 1);
    }
}

#[test]
fn a_release_whose_write_failed_after_it_was_sent_is_not_sent_again() {
    // X held twice; the first write fails; its release is applied by the first attempt, and
    // every attempt times out. Old code read again at the next tick and released again,
    // leaving the second push's write unfenced.
    let world = World::new(POLICY);
    let (a, b) = (world.replica(), world.replica());
    let (mut s1, mut s2) = (world.open_put(&a, "v1", X, &[]), world.open_put(&a, "v1", X, &[]));
    to_put(&world, &mut s1, X, |c, _| world.etcd.answer(c));
    to_put(&world, &mut s2, X, |c, _| world.etcd.answer(c));
    fail_put(&mut s1);
    root(&world, &a, |c, n| {
        if n == 1 {
            world.etcd.answer(c);
        }
        world.advance(c.timeout_ms);
        timed_out()
    });
    assert_eq!(holders(&world), format!("{} 1", sha(X)));
    run_for(&world, &[&a, &b], 1000);
    assert_eq!(holders(&world), format!("{} 1", sha(X)), "the second push still holds");
    assert_eq!(world.push(&b, "v1", Y, &[]).status, 409);
}

// ---- Break-glass windows in etcd: no late or repeated attempt brings back a used window.

const WKEY: &str = "/immutable-tags/window:app:v1:admin";

/// Whether `c` writes admin's window on v1.
fn window_write(c: &Call) -> bool {
    let key = crate::util::base64::encode(WKEY.as_bytes());
    c.header(":path") != Some("/v3/lease/grant")
        && c.body.as_deref().is_some_and(|b| String::from_utf8_lossy(b).contains(&key))
}

/// A read of v1 by admin with the reason header, answered 200; etcd answers by `etcd`.
fn open_window(world: &World, r: &Replica, mut etcd: impl FnMut(&Call) -> Reply) {
    let mut s = world.open(r, "HEAD", "/v2/app/manifests/v1", &[ADMIN, REASON]);
    s.h.response_headers.borrow_mut().push((":status".into(), "200".into()));
    s.f.on_response_headers(&s.h);
    loop {
        let Some(token) = s.h.pending.borrow_mut().pop_front() else { break };
        let call = s.h.call_of(token);
        let reply = etcd(&call);
        deliver(&mut s, token, reply);
    }
    assert_eq!(s.h.response_resumes.get(), 1, "the read's answer goes on");
}

/// v1 holds X, written by a plain push.
fn x_on_v1() -> (World, Replica) {
    let world = World::new(ETCD_BG);
    let a = world.replica();
    assert_eq!(world.push(&a, "v1", X, &[]).status, 201);
    run_for(&world, &[&a], 500);
    (world, a)
}

#[test]
fn a_window_write_that_lands_late_does_not_reopen_a_used_window() {
    // The window's write times out at a hung member, which applies it later; the retry, on
    // another member, opens the window. admin uses it. Old code (a plain put): the late
    // attempt wrote the window again, and it served a second override.
    let (world, a) = x_on_v1();
    let mut late = None;
    open_window(&world, &a, |c| {
        if window_write(c) && late.is_none() {
            late = Some(c.clone());
            return timed_out();
        }
        world.etcd.answer(c)
    });
    assert_eq!(world.push(&a, "v1", Y, &[ADMIN]).status, 201, "the window overrides once");
    run_for(&world, &[&a], 500);
    world.etcd.answer(&late.expect("a window write timed out"));
    assert_eq!(world.push(&a, "v1", X, &[ADMIN]).status, 409, "used");
    assert_eq!(world.reg.holds("v1"), Some(sha(Y)));
}

#[test]
fn a_window_put_back_late_does_not_reopen_it_once_used_again() {
    // admin's override fails (4xx): its window is put back by the root; that write times out
    // at a hung member, which applies it later, and its retry puts the window back. admin uses
    // it. Old code (create if absent): the late attempt found the used window's key gone and
    // wrote it again.
    let (world, a) = x_on_v1();
    open_window(&world, &a, |c| world.etcd.answer(c));
    let mut s = world.open_put(&a, "v1", Y, &[ADMIN]);
    to_put(&world, &mut s, Y, |c, _| world.etcd.answer(c));
    fail_put(&mut s);
    let mut late = None;
    root(&world, &a, |c, _| {
        if window_write(c) && late.is_none() {
            late = Some(c.clone());
            return timed_out();
        }
        world.etcd.answer(c)
    });
    assert_eq!(world.push(&a, "v1", Y, &[ADMIN]).status, 201, "put back: the window overrides");
    run_for(&world, &[&a], 500);
    world.etcd.answer(&late.expect("a put back timed out"));
    assert_eq!(world.push(&a, "v1", X, &[ADMIN]).status, 409, "used");
    assert_eq!(world.reg.holds("v1"), Some(sha(Y)));
}

#[test]
fn a_use_of_a_window_whose_answer_is_lost_serves_at_most_one_override() {
    // The use is applied, its answer lost; the retry finds the window used: refused (the
    // window is spent, fail closed), and nothing is left to use.
    let (world, a) = x_on_v1();
    open_window(&world, &a, |c| world.etcd.answer(c));
    let mut lost = false;
    let mut s = world.open_put(&a, "v1", Y, &[ADMIN]);
    world.pump(&mut s, false);
    world.body(&mut s, Y, true);
    loop {
        let Some(token) = s.h.pending.borrow_mut().pop_front() else { break };
        let call = s.h.call_of(token);
        let mut reply =
            if call.cluster == "etcd" { world.etcd.answer(&call) } else { world.reg.answer(&call) };
        if window_write(&call) && !lost {
            lost = true;
            reply = timed_out();
        }
        deliver(&mut s, token, reply);
    }
    assert!(lost);
    assert_eq!(super::world::reply(&s).status, 409);
    assert_eq!(world.push(&a, "v1", Y, &[ADMIN]).status, 409, "nothing left to use");
    assert_eq!(world.reg.holds("v1"), Some(sha(X)));
}
