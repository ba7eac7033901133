//! Retries never undercount holds, nor bring back a used break-glass window. A retried etcd
//! attempt may find a write it cannot tell from its own (the same bytes, the same lease), or
//! land late, after its answer was given up on. Holds may be counted too often (the tag then
//! waits for its record's expiry: fail closed), never too seldom; a window serves one override.
use super::fake::{answer, Call, Reply};
use super::sequences::{deliver, root_response, run_for, sha, Replica, Stream, World, X, Y};

const POLICY: &str = r#"{"upstream": {"cluster": "registry", "write_timeout_ms": 3000}, "global": {"immutable_tags": true},
  "claims": {"ttl_seconds": 10, "etcd": {"cluster": "etcd", "authority": "etcd.test", "timeout_ms": 2000}}}"#;
const KEY: &str = "/immutable-tags/app:v1";

fn timed_out() -> Reply {
    answer(504, &[], b"upstream request timeout")
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

// ---- Break-glass windows in etcd: no late or repeated attempt brings back a used window.

use super::sequences::{ADMIN, ETCD_BG, REASON};
const WKEY: &str = "/immutable-tags/window:app:v1:admin";

/// Whether `c` writes admin's window on v1.
fn window_write(c: &Call) -> bool {
    let key = crate::base64::encode(WKEY.as_bytes());
    c.header(":path") != Some("/v3/lease/grant") && c.body.as_deref().is_some_and(|b| String::from_utf8_lossy(b).contains(&key))
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
        let mut reply = if call.cluster == "etcd" { world.etcd.answer(&call) } else { world.reg.answer(&call) };
        if window_write(&call) && !lost {
            lost = true;
            reply = timed_out();
        }
        deliver(&mut s, token, reply);
    }
    assert!(lost);
    assert_eq!(super::sequences::reply(&s).status, 409);
    assert_eq!(world.push(&a, "v1", Y, &[ADMIN]).status, 409, "nothing left to use");
    assert_eq!(world.reg.holds("v1"), Some(sha(X)));
}
