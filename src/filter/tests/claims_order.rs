//! Issue 27, hole B: claims order views and committed changes by the store's own counter (etcd's
//! revision, a shared-data slot's write counter), never by wall clock. Replicas whose clocks
//! disagree, or a clock that steps back, must not let a view taken before an override pass
//! as newer than it.
use super::sequences::{reply, run_for, sha, World, ADMIN, BOB, ETCD_BG, REASON, X, Y};

const V1: &str = "v1";
const SHARED_BG: &str = r#"{"upstream": {"cluster": "registry"}, "global": {"immutable_tags": true},
  "break_glass": {"principals": ["admin"], "repositories": ["app"], "actions": ["overwrite", "delete"]}}"#;

/// etcd: the override to Y is committed by replica B; a plain push of the old digest X, whose
/// HEAD went out through replica A before it, is held at its last byte. A's clock is 10 s ahead
/// of B's, so by wall clock its view looks newer than the override's commit.
#[test]
fn skew_a_view_from_a_replica_whose_clock_is_ahead_does_not_undo_an_override() {
    for map in [false, true] {
        let world = World::new(ETCD_BG);
        let (a, b) = (world.replica(), world.replica());
        a.root.clock_offset.set(10_000);
        assert_eq!(world.push(&b, V1, X, &[BOB]).status, 201);
        run_for(&world, &[&a, &b], 1_000);
        if map {
            // A's map learns X (an identical re-push through A): the held push's view is that entry.
            assert_eq!(world.push(&a, V1, X, &[BOB]).status, 201);
            run_for(&world, &[&a, &b], 1_000);
        }
        let mut p = world.open_put(&a, V1, X, &[BOB]);
        world.pump(&mut p, false);
        world.body(&mut p, &X[..X.len() - 1], false);
        world.pump(&mut p, false);
        world.advance(100);
        assert_eq!(world.push(&b, V1, Y, &[ADMIN, REASON]).status, 201, "the override");
        run_for(&world, &[&a, &b], 500);
        world.body(&mut p, &X[X.len() - 1..], true);
        world.pump(&mut p, false);
        assert_eq!(reply(&p).status, 409, "map: {map}: {:?}", String::from_utf8_lossy(&reply(&p).body));
        assert_eq!(world.reg.holds(V1), Some(sha(Y)), "map: {map}");
        assert_eq!(world.reg.history.borrow().len(), if map { 3 } else { 2 }, "map: {map}");
    }
}

/// Shared data (one Envoy): a push of X is held at its last byte; the machine's clock steps
/// back 10 s; the override to Y is committed. By wall clock the held push's view is newer.
#[test]
fn a_clock_step_back_does_not_let_a_held_push_undo_an_override() {
    for map in [false, true] {
        let world = World::new(SHARED_BG);
        let (a, b) = (world.replica(), world.replica());
        assert_eq!(world.push(&a, V1, X, &[BOB]).status, 201);
        world.advance(1_000);
        if !map {
            a.w.cache.borrow_mut().forget(&a.w.map_key("app", Some("registry.test")), V1);
        }
        let mut p = world.open_put(&a, V1, X, &[BOB]);
        world.pump(&mut p, false);
        world.body(&mut p, &X[..X.len() - 1], false);
        world.pump(&mut p, false);
        world.advance(100);
        let mut o = world.open_put(&b, V1, Y, &[ADMIN, REASON]);
        world.pump(&mut o, false);
        world.body(&mut o, Y, true);
        world.pump(&mut o, true);
        assert_eq!(o.held_puts.len(), 1, "the override is written");
        // One Envoy, one machine clock: every worker steps back while the override is written.
        a.root.clock_offset.set(-10_000);
        b.root.clock_offset.set(-10_000);
        world.answer_put(&mut o);
        assert_eq!(reply(&o).status, 201, "the override");
        world.advance(100);
        world.body(&mut p, &X[X.len() - 1..], true);
        world.pump(&mut p, false);
        assert_eq!(reply(&p).status, 409, "map: {map}: {:?}", String::from_utf8_lossy(&reply(&p).body));
        assert_eq!(world.reg.holds(V1), Some(sha(Y)), "map: {map}");
        assert_eq!(world.reg.history.borrow().len(), 2, "map: {map}");
    }
}
