//! Issue 27's digest-delete race (the simulator's seed 2381): a push of digest D to a new
//! protected tag stored between a digest delete's check and its landing was deleted with the
//! manifest, no break-glass asked. The fence on `repository@D` (`claims::fence_tag`) refuses
//! whichever of the two comes second, in both stores.
use super::fake::Call;
use super::world::{reply, run_for, sha, Stream, World, BOB, ETCD_BG, SHARED, X};
use crate::filter::host::Host;

/// The delete the filter let through reaches the registry (what Envoy forwards).
fn land(world: &World, s: &Stream) -> u16 {
    let call = Call {
        cluster: "registry".into(),
        headers: s.h.request_headers.borrow().clone(),
        body: None,
        timeout_ms: 0,
        at_ms: world.clock.now_ms(),
    };
    world.reg.answer(&call).status
}

/// The registry's answer to the delete reaches the filter; the stream ends.
fn answered(s: &mut Stream, status: u16) {
    s.h.response_headers.borrow_mut().push((":status".into(), status.to_string()));
    *s.h.code_details.borrow_mut() = Some("via_upstream".into());
    s.f.on_response_headers(&s.h);
    s.f.on_done(&s.h);
}

fn delete_x(world: &World, r: &super::world::Replica) -> Stream {
    let mut d = world.open(r, "DELETE", &format!("/v2/app/manifests/{}", sha(X)), &[BOB]);
    world.pump(&mut d, false);
    d
}

#[test]
fn a_push_of_a_digest_being_deleted_is_refused_and_the_tag_never_deleted() {
    for policy in [SHARED, ETCD_BG] {
        let world = World::new(policy);
        let (a, b) = (world.replica(), world.replica());
        // The delete is checked (no protected tag holds X) and let through...
        let mut d = delete_x(&world, &a);
        assert!(d.h.reply().is_none(), "{policy}: let through");
        // ...a push of X to a new protected tag comes before it lands...
        let mut p = world.open_put(&b, "v1", X, &[BOB]);
        world.pump(&mut p, false);
        world.body(&mut p, X, true);
        world.pump(&mut p, false);
        p.f.on_done(&p.h);
        let pushed = reply(&p);
        // ...then the delete lands: had the push been stored, v1 would be gone with it.
        let deleted = land(&world, &d);
        answered(&mut d, deleted);
        assert_eq!(pushed.status, 409, "{policy}: {}", String::from_utf8_lossy(&pushed.body));
        assert!(String::from_utf8_lossy(&pushed.body).contains("a delete of this manifest is in flight"));
        assert!(
            !world.reg.history.borrow().iter().any(|(t, _)| t == "v1"),
            "{policy}: {:?}",
            world.reg.history.borrow()
        );
        // The registry answered the delete: the fence is given back, the push goes through.
        run_for(&world, &[&a, &b], 500);
        assert_eq!(world.push(&b, "v1", X, &[BOB]).status, 201, "{policy}");
    }
}

#[test]
fn a_delete_of_a_digest_a_push_is_writing_is_refused() {
    for policy in [SHARED, ETCD_BG] {
        let world = World::new(policy);
        let (a, b) = (world.replica(), world.replica());
        // The push holds its claim, its PUT on its way to the registry...
        let mut p = world.open_put(&a, "v1", X, &[BOB]);
        world.pump(&mut p, true);
        world.body(&mut p, X, true);
        world.pump(&mut p, true);
        assert_eq!(p.held_puts.len(), 1, "{policy}: the PUT is sent");
        // ...the delete's check cannot see v1 yet: it sees the claim.
        let mut d = delete_x(&world, &b);
        let refused = d.h.reply().expect("refused");
        assert_eq!(refused.status, 409, "{policy}");
        assert!(
            String::from_utf8_lossy(&refused.body).contains("a push of it to a protected tag is in flight")
        );
        d.f.on_done(&d.h);
        world.answer_put(&mut p);
        assert_eq!(reply(&p).status, 201);
        p.f.on_done(&p.h);
        assert_eq!(world.reg.holds("v1"), Some(sha(X)));
        // The refused delete gave its fence back: a push of X to another tag goes through.
        run_for(&world, &[&a, &b], 500);
        assert_eq!(world.push(&a, "v2", X, &[BOB]).status, 201, "{policy}");
        // Now v1 and v2 hold X: the delete is refused for them, as before the fence.
        run_for(&world, &[&a, &b], 500);
        let d = delete_x(&world, &b);
        let body = String::from_utf8_lossy(&d.h.reply().expect("refused").body).to_string();
        assert!(body.contains("held by immutable tag"), "{policy}: {body}");
    }
}

#[test]
fn a_delete_whose_check_took_half_the_ttl_is_refused_before_it_goes() {
    for policy in [SHARED, ETCD_BG] {
        let world = World::new(policy);
        let a = world.replica();
        let mut d = world.open(&a, "DELETE", &format!("/v2/app/manifests/{}", sha(X)), &[BOB]);
        // The fence is taken; the registry's tags/list answer comes 30 s later (TTL 60 s).
        loop {
            let next = d.h.pending.borrow().iter().copied().find(|t| d.h.call_of(*t).cluster == "etcd");
            let Some(token) = next else { break };
            d.h.pending.borrow_mut().retain(|t| *t != token);
            let r = world.etcd.answer(&d.h.call_of(token));
            super::world::deliver(&mut d, token, r);
        }
        world.advance(30_000);
        world.pump(&mut d, false);
        assert_eq!(d.h.reply().expect("refused").status, 503, "{policy}");
    }
}

// ---- A fenced delete let through is bounded by Envoy's router: `x-envoy-upstream-rq-timeout-ms`
// is the time left until half the TTL since the fence was taken, so the registry's answer (or
// Envoy's 504) comes while the fence still holds.

const T: &str = "x-envoy-upstream-rq-timeout-ms";
const E: &str = "x-envoy-expected-rq-timeout-ms";

/// A delete of X whose client sent its own timeouts; the fence taken, then `ms` pass before
/// the registry's tags/list answer (TTL 60 s).
fn delete_after(world: &World, policy: &str, ms: u64, refuse_writes: bool) -> Stream {
    let a = world.replica();
    let mut d = world.open(
        &a,
        "DELETE",
        &format!("/v2/app/manifests/{}", sha(X)),
        &[BOB, (T, "999999"), (E, "999999")],
    );
    loop {
        let next = d.h.pending.borrow().iter().copied().find(|t| d.h.call_of(*t).cluster == "etcd");
        let Some(token) = next else { break };
        d.h.pending.borrow_mut().retain(|t| *t != token);
        let r = world.etcd.answer(&d.h.call_of(token));
        super::world::deliver(&mut d, token, r);
    }
    assert!(d.h.reply().is_none(), "{policy}: fence taken");
    world.advance(ms);
    d.h.refuse_header_writes.set(refuse_writes);
    world.pump(&mut d, false);
    d
}

#[test]
fn a_fenced_delete_goes_with_the_time_left_to_half_the_ttl_replacing_the_clients() {
    for policy in [SHARED, ETCD_BG] {
        let world = World::new(policy);
        let d = delete_after(&world, policy, 10_000, false);
        assert!(d.h.reply().is_none(), "{policy}: let through");
        assert_eq!(d.h.request_header_value(T).as_deref(), Some("20000"), "{policy}");
        // A router that respects the expected timeout reads this one first.
        assert_eq!(d.h.request_header_value(E).as_deref(), Some("20000"), "{policy}");
    }
}

#[test]
fn a_fenced_delete_whose_timeout_cannot_be_written_is_refused() {
    for policy in [SHARED, ETCD_BG] {
        let world = World::new(policy);
        let d = delete_after(&world, policy, 10_000, true);
        assert_eq!(d.h.reply().expect("refused").status, 503, "{policy}");
    }
}

#[test]
fn a_break_glass_delete_of_a_digest_goes_bounded_too() {
    use super::world::{run_for, ADMIN, REASON};
    let shared = ETCD_BG.replace(
        r#""claims": {"etcd": {"cluster": "etcd", "authority": "etcd.test", "timeout_ms": 500}}"#,
        r#""claims": {}"#,
    );
    for policy in [shared.as_str(), ETCD_BG] {
        let world = World::new(policy);
        let a = world.replica();
        assert_eq!(world.push(&a, "v1", X, &[BOB]).status, 201);
        run_for(&world, &[&a], 500);
        let mut d = world.open(
            &a,
            "DELETE",
            &format!("/v2/app/manifests/{}", sha(X)),
            &[ADMIN, REASON, (T, "999999")],
        );
        world.pump(&mut d, false);
        assert!(d.h.reply().is_none(), "{policy}: granted: {:?}", d.h.reply());
        let left: u64 = d.h.request_header_value(T).and_then(|v| v.parse().ok()).expect("bounded");
        assert!((1..=30_000).contains(&left), "{policy}: {left}");
    }
}
