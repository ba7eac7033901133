//! A fenced delete let through is bounded by Envoy's router: `x-envoy-upstream-rq-timeout-ms`
//! is the time left until half the TTL since the fence was taken, so the registry's answer (or
//! Envoy's 504) comes while the fence still holds.
use super::sequences::{sha, Stream, World, BOB, ETCD_BG, SHARED, X};

const T: &str = "x-envoy-upstream-rq-timeout-ms";
const E: &str = "x-envoy-expected-rq-timeout-ms";

/// A delete of X whose client sent its own timeouts; the fence taken, then `ms` pass before
/// the registry's tags/list answer (TTL 60 s).
fn delete_after(world: &World, policy: &str, ms: u64, refuse_writes: bool) -> Stream {
    let a = world.replica();
    let mut d = world.open(&a, "DELETE", &format!("/v2/app/manifests/{}", sha(X)), &[BOB, (T, "999999"), (E, "999999")]);
    loop {
        let next = d.h.pending.borrow().iter().copied().find(|t| d.h.call_of(*t).cluster == "etcd");
        let Some(token) = next else { break };
        d.h.pending.borrow_mut().retain(|t| *t != token);
        let r = world.etcd.answer(&d.h.call_of(token));
        super::sequences::deliver(&mut d, token, r);
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
    use super::sequences::{run_for, ADMIN, REASON};
    let shared = ETCD_BG.replace(r#""claims": {"etcd": {"cluster": "etcd", "authority": "etcd.test", "timeout_ms": 500}}"#, r#""claims": {}"#);
    for policy in [shared.as_str(), ETCD_BG] {
        let world = World::new(policy);
        let a = world.replica();
        assert_eq!(world.push(&a, "v1", X, &[BOB]).status, 201);
        run_for(&world, &[&a], 500);
        let mut d = world.open(&a, "DELETE", &format!("/v2/app/manifests/{}", sha(X)), &[ADMIN, REASON, (T, "999999")]);
        world.pump(&mut d, false);
        assert!(d.h.reply().is_none(), "{policy}: granted: {:?}", d.h.reply());
        let left: u64 = d.h.request_header_value(T).and_then(|v| v.parse().ok()).expect("bounded");
        assert!((1..=30_000).contains(&left), "{policy}: {left}");
    }
}
