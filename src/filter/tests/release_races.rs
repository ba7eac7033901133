//! Releases retried by the root queue (an attacker's read of the etcd failover): a release
//! whose attempt may have landed is never applied again, so it cannot take another push's
//! hold (both failed before the fix: two digests stored to one tag).
use super::fake::{answer, Reply};
use super::sequences::{reply, root_response, Replica, World, X, Y};

const POLICY: &str = r#"{"upstream": {"cluster": "registry", "write_timeout_ms": 3000}, "global": {"immutable_tags": true},
  "claims": {"ttl_seconds": 10, "etcd": {"cluster": "etcd", "authority": "etcd.test", "timeout_ms": 2000}}}"#;
const KEY: &str = "/immutable-tags/app:v1";

fn timed_out() -> Reply {
    answer(504, &[], b"upstream request timeout")
}

fn root_one(r: &Replica, f: impl FnOnce(&super::fake::Call) -> Reply) -> bool {
    let Some(token) = r.root.pending.borrow_mut().pop_front() else { return false };
    let call = r.root.call_of(token);
    let reply = f(&call);
    let size = reply.body.len();
    r.root.set_answer(Some(reply));
    root_response(&r.root, &r.w, token, size);
    r.root.set_answer(None);
    true
}

fn is_delete(c: &super::fake::Call) -> bool {
    String::from_utf8_lossy(c.body.as_deref().unwrap_or_default()).contains("request_delete_range")
}

/// `outer`: every attempt of A's delete times out (the Call gives up; the release is queued
/// again and re-read at the next tick), instead of one attempt then the Call's own retry.
fn double_release(outer: bool) -> (u16, u16, Vec<(String, String)>) {
    let world = World::new(POLICY);
    let (a, b, c) = (world.replica(), world.replica(), world.replica());
    // A's push of X: claimed; the registry refuses the write (401): a release is queued.
    let r = world.push(&a, "v1", X, &[("authorization", "Bearer bob-readonly")]);
    assert_eq!(r.status, 401);
    crate::filter::claims::etcd::tick(&a.root, &a.w);
    // The release reads the record, sends delete_if(m); etcd applies it, the answer is lost.
    let mut applied = false;
    while root_one(&a, |call| {
        if is_delete(call) && !applied {
            applied = true;
            let _ = world.etcd.answer(call);
            world.advance(500);
            return timed_out();
        }
        if is_delete(call) && outer {
            world.advance(500);
            return timed_out(); // later attempts time out too
        }
        world.etcd.answer(call)
    }) {
        if applied && !outer {
            break;
        }
    }
    assert!(world.etcd.value(KEY).is_none(), "A's release applied");
    // B pushes X: it claims the absent tag; its PUT is in flight at the registry.
    let mut sb = world.open_put(&b, "v1", X, &[]);
    world.pump(&mut sb, true);
    world.body(&mut sb, X, true);
    world.pump(&mut sb, true);
    assert_eq!(sb.held_puts.len(), 1);
    eprintln!("B holds: {:?}", world.etcd.value(KEY));
    // A goes on: its Call's retry (inner) or the re-read at its next tick (outer).
    if outer {
        world.tick(&a);
    } else {
        world.answer_root(&a);
    }
    eprintln!("after A: {:?}", world.etcd.value(KEY));
    // C pushes Y to the tag while B's write of X is still in flight.
    let rc = world.push(&c, "v1", Y, &[]);
    world.answer_put(&mut sb);
    sb.f.on_done(&sb.h);
    let rb = reply(&sb);
    let history = world.reg.history.borrow().clone();
    (rc.status, rb.status, history)
}

#[test]
fn retried_release_drops_another_pushs_hold_inner() {
    let (c, b, h) = double_release(false);
    eprintln!("C {c}, B {b}, history {h:?}");
    assert!(!(c == 201 && b == 201), "two digests both stored to one immutable tag: {h:?}");
}

#[test]
fn retried_release_drops_another_pushs_hold_outer() {
    let (c, b, h) = double_release(true);
    eprintln!("C {c}, B {b}, history {h:?}");
    assert!(!(c == 201 && b == 201), "two digests both stored to one immutable tag: {h:?}");
}
