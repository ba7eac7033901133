//! Issue 27, "nothing lingers": a hold whose push never settles (its write answered 5xx, the
//! outcome unknown; or its client left while the claim's call was out) has an age of its own,
//! so identical re-pushes that keep the tag's record fresh do not carry it forward forever.
use super::sequences::{reply, run_for, sha, Replica, World, ADMIN, BOB, ETCD_BG, REASON, X, Y};

const V1: &str = "v1";
const SHARED_BG: &str = r#"{"upstream": {"cluster": "registry"}, "global": {"immutable_tags": true},
  "break_glass": {"principals": ["admin"], "repositories": ["app"], "actions": ["overwrite", "delete"]}}"#;

fn ttl(r: &Replica) -> u64 {
    r.w.config.claims.ttl_ms
}

/// Identical re-pushes of X every half TTL for `ms`, ticking the replica.
fn repush(world: &World, r: &Replica, ms: u64) {
    let mut t = 0;
    while t < ms {
        assert_eq!(world.push(r, V1, X, &[BOB]).status, 201, "a re-push at {t} ms");
        run_for(world, &[r], ttl(r) / 2);
        t += ttl(r) / 2;
    }
}

#[test]
fn an_abandoned_hold_does_not_outlive_two_ttls_under_re_pushes() {
    for policy in [SHARED_BG, ETCD_BG] {
        let world = World::new(policy);
        let a = world.replica();
        assert_eq!(world.push(&a, V1, X, &[BOB]).status, 201);
        run_for(&world, &[&a], 1_000);
        // Stored, answered 503: the filter cannot tell, so its hold stays (abandoned).
        world.reg.fault.set(1);
        assert_eq!(world.push(&a, V1, X, &[BOB]).status, 503);
        repush(&world, &a, 2 * ttl(&a) + ttl(&a) / 2);
        let r = world.push(&a, V1, Y, &[ADMIN, REASON]);
        assert_eq!(r.status, 201, "etcd: {}: {:?}", policy == ETCD_BG, String::from_utf8_lossy(&r.body));
        assert_eq!(world.reg.holds(V1), Some(sha(Y)));
    }
}

#[test]
fn a_live_hold_is_never_pruned_before_two_ttls() {
    for policy in [SHARED_BG, ETCD_BG] {
        let world = World::new(policy);
        let a = world.replica();
        assert_eq!(world.push(&a, V1, X, &[BOB]).status, 201);
        run_for(&world, &[&a], 1_000);
        // A re-push of X whose write is still at the registry (held back).
        let mut p = world.open_put(&a, V1, X, &[BOB]);
        world.pump(&mut p, true);
        world.body(&mut p, X, true);
        world.pump(&mut p, true);
        assert_eq!(p.held_puts.len(), 1);
        // Re-pushes keep the record fresh; just short of two TTLs the hold still refuses.
        repush(&world, &a, 2 * ttl(&a) - ttl(&a) / 2);
        world.advance(ttl(&a) / 2 - 300);
        let r = world.push(&a, V1, Y, &[ADMIN, REASON]);
        assert_eq!(r.status, 409, "etcd: {}: {:?}", policy == ETCD_BG, String::from_utf8_lossy(&r.body));
        world.answer_put(&mut p);
        assert_eq!(reply(&p).status, 201);
        assert_eq!(world.reg.holds(V1), Some(sha(X)));
    }
}

#[test]
fn two_holders_of_one_digest_one_releases_the_other_still_fences() {
    for policy in [SHARED_BG, ETCD_BG] {
        let world = World::new(policy);
        let a = world.replica();
        // Two pushes of X to the new tag, both claimed, both held at the registry.
        let mut ps: Vec<_> = [("authorization", "Bearer bob-readonly"), BOB].iter().map(|h| {
            let mut p = world.open_put(&a, V1, X, &[*h]);
            world.pump(&mut p, true);
            world.body(&mut p, X, true);
            world.pump(&mut p, true);
            assert_eq!(p.held_puts.len(), 1);
            world.advance(100);
            p
        }).collect();
        // The first is refused (401): its release takes its own hold only.
        world.answer_put(&mut ps[0]);
        assert_eq!(reply(&ps[0]).status, 401);
        run_for(&world, &[&a], 500);
        let r = world.push(&a, V1, Y, &[BOB]);
        assert_eq!(r.status, 409, "etcd: {}: {:?}", policy == ETCD_BG, String::from_utf8_lossy(&r.body));
        world.answer_put(&mut ps[1]);
        assert_eq!(reply(&ps[1]).status, 201);
        assert_eq!(world.reg.history.borrow().clone(), vec![(V1.to_string(), sha(X))]);
    }
}
