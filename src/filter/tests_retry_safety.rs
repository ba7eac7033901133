//! Retries never undercount holds, nor bring back a used break-glass window. A retried etcd
//! attempt may find a write it cannot tell from its own (the same bytes, the same lease), or
//! land late, after its answer was given up on. Holds may be counted too often (the tag then
//! waits for its record's expiry: fail closed), never too seldom; a window serves one override.
use super::fake::{answer, Call, Reply};
use super::tests_claims::{deliver, root_response, run_for, sha, Replica, Stream, World, X, Y};

const POLICY: &str = r#"{"upstream": {"cluster": "registry", "write_timeout_ms": 3000}, "global": {"immutable_tags": true},
  "claims": {"ttl_seconds": 10, "etcd": {"cluster": "etcd", "authority": "etcd.test", "timeout_ms": 2000}}}"#;
const KEY: &str = "/immutable-tags/app:v1";

fn timed_out() -> Reply {
    answer(504, &[], b"upstream request timeout")
}

fn holders(world: &World) -> String {
    world.etcd.value(KEY).unwrap_or_default().split(' ').skip(3).collect::<Vec<_>>().join(" ")
}

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
    super::claims::etcd::tick(&r.root, &r.w);
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
    let (mut s1, mut s2, mut s3) = (world.open_put(&a, "v1", X, &[]), world.open_put(&a, "v1", X, &[]), world.open_put(&a, "v1", X, &[]));
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
