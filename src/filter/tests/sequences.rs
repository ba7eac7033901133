//! The claims protocol's holes (issue 27's sequences, issue 21's items 1-3), each replayed on
//! fake hosts against a fake etcd and a fake registry that stores whatever it is sent and
//! records every stored write. Every stream is its own `FakeHost` (its own request and calls)
//! sharing its replica's worker; every replica shares the one clock (`Process`), and etcd's
//! leases end on that clock.
use super::fake::{answer, Call, FakeHost, Reply};
use super::world::*;
use crate::config::Config;
use crate::filter::host::Host;
use crate::filter::worker::Worker;
use crate::filter::Filter;
use std::rc::Rc;

const V1: &str = "v1";

/// Issue 27, sequence 1: a plain push of the old digest, opened before an override and held at
/// its last byte, must not undo the override.
#[test]
fn a_held_same_digest_push_does_not_undo_an_override() {
    for same_replica in [true, false] {
        let world = World::new(ETCD_BG);
        let (a, b) = (world.replica(), world.replica());
        assert_eq!(world.push(&a, V1, X, &[BOB]).status, 201);
        run_for(&world, &[&a, &b], 1_000);
        let through = if same_replica { &a } else { &b };
        let mut p = world.open_put(through, V1, X, &[BOB]);
        world.pump(&mut p, false);
        world.body(&mut p, &X[..X.len() - 1], false);
        world.pump(&mut p, false);
        world.advance(100);
        assert_eq!(world.push(&a, V1, Y, &[ADMIN, REASON]).status, 201, "the override");
        run_for(&world, &[&a, &b], 500);
        world.body(&mut p, &X[X.len() - 1..], true);
        world.pump(&mut p, false);
        assert_eq!(reply(&p).status, 409, "same replica: {same_replica}");
        assert_eq!(world.reg.holds(V1), Some(sha(Y)), "same replica: {same_replica}");
    }
}

/// Issue 27, sequence 2: a same-digest push that joins a claim holds it too, and a release by
/// one holder never removes the record another stored write depends on.
#[test]
fn a_new_tag_never_has_two_winners_when_one_holder_fails() {
    let world = World::new(ETCD_BG);
    let (a, b) = (world.replica(), world.replica());
    let mut p2 = world.open_put(&a, V1, Y, &[BOB]);
    world.pump(&mut p2, false);
    world.body(&mut p2, &Y[..Y.len() - 1], false);
    let mut p1 = world.open(&b, "PUT", "/v2/app/manifests/v1", &[("content-type", "text/plain"), BOB]);
    world.pump(&mut p1, false);
    world.body(&mut p1, X, true);
    world.pump(&mut p1, true);
    assert_eq!(p1.held_puts.len(), 1, "P1 holds the claim, its PUT is in flight");
    let mut p1b = world.open_put(&a, V1, X, &[BOB]);
    world.pump(&mut p1b, false);
    world.body(&mut p1b, X, true);
    world.pump(&mut p1b, true);
    assert_eq!(p1b.held_puts.len(), 1, "P1' joins the claim");
    world.answer_put(&mut p1);
    assert_eq!(reply(&p1).status, 400);
    run_for(&world, &[&a, &b], 500);
    world.answer_put(&mut p1b);
    assert_eq!(reply(&p1b).status, 201);
    run_for(&world, &[&a, &b], 500);
    world.body(&mut p2, &Y[Y.len() - 1..], true);
    world.pump(&mut p2, false);
    assert_eq!(reply(&p2).status, 409);
    assert_eq!(world.reg.holds(V1), Some(sha(X)));
    assert_eq!(world.reg.history.borrow().len(), 1, "one stored write");
}

/// Issue 27, sequence 3: the override's record outlives the overriding replica, so the other
/// replica's map entry (the old digest) cannot put the old digest back.
#[test]
fn an_override_outlives_the_replica_that_made_it() {
    let world = World::new(ETCD_BG);
    let (mut a, b) = (world.replica(), world.replica());
    assert_eq!(world.push(&a, V1, X, &[BOB]).status, 201);
    run_for(&world, &[&a, &b], 15_000);
    // B learns X (its map) from an identical re-push.
    assert_eq!(world.push(&b, V1, X, &[BOB]).status, 201);
    run_for(&world, &[&a, &b], 1_000);
    assert_eq!(world.push(&a, V1, Y, &[ADMIN, REASON]).status, 201, "the override");
    run_for(&world, &[&a, &b], 500);
    a.dead = true; // SIGKILL: its lease is no longer kept alive
    run_for(&world, &[&a, &b], 50_000);
    let r = world.push(&b, V1, X, &[BOB]);
    assert_eq!(
        (r.status, world.reg.holds(V1)),
        (409, Some(sha(Y))),
        "{:?}",
        String::from_utf8_lossy(&r.body)
    );
}

/// Issue 27, sequence 4: a claim answer that arrives after the TTL is not trusted.
#[test]
fn a_claim_answer_older_than_the_ttl_is_discarded() {
    let world = World::new(ETCD_BG);
    let a = world.replica();
    let mut p = world.open_put(&a, V1, X, &[BOB]);
    world.pump(&mut p, false);
    world.body(&mut p, X, true);
    // The claim's txn is in flight; the replica pauses for longer than the TTL.
    let token = p.h.pending.borrow_mut().pop_front().unwrap();
    let call = p.h.call_of(token);
    assert_eq!(call.cluster, "etcd");
    world.advance(61_000);
    let r = world.etcd.answer(&call);
    deliver(&mut p, token, r);
    world.pump(&mut p, false);
    assert_eq!(reply(&p).status, 503);
    assert!(p.h.calls_with("PUT").is_empty(), "nothing written");
}

#[test]
fn an_etcd_timeout_not_well_below_the_ttl_is_refused_naming_both_fields() {
    let c = r#"{"claims": {"ttl_seconds": 60, "etcd": {"cluster": "etcd", "timeout_ms": 60000}}}"#;
    let err = Config::from_json(c.as_bytes()).map(|_| ()).expect_err("refused").to_string();
    assert!(err.contains("claims.etcd.timeout_ms") && err.contains("claims.ttl_seconds"), "{err}");
    // A write must land while its claim lives (found by the simulation, seed 5619 before).
    let c = r#"{"upstream": {"write_timeout_ms": 40000}, "claims": {"ttl_seconds": 60}}"#;
    let err = Config::from_json(c.as_bytes()).map(|_| ()).expect_err("refused").to_string();
    assert!(err.contains("upstream.write_timeout_ms") && err.contains("claims.ttl_seconds"), "{err}");
    let ok = r#"{"claims": {"ttl_seconds": 60, "etcd": {"cluster": "etcd", "timeout_ms": 1000}}}"#;
    assert!(Config::from_json(ok.as_bytes()).is_ok());
}

/// Issue 27, sequence 5: the claim key of a push whose client left (and whose answer never
/// came) is gone within two TTLs while its replica lives on.
#[test]
fn a_claim_whose_push_ended_without_an_answer_does_not_linger() {
    let world = World::new(ETCD_BG);
    let a = world.replica();
    let mut p = world.open_put(&a, V1, X, &[BOB]);
    world.pump(&mut p, false);
    world.body(&mut p, X, true);
    world.pump(&mut p, true);
    p.f.on_done(&p.h);
    assert!(world.etcd.value("/immutable-tags/app:v1").is_some());
    run_for(&world, &[&a], 130_000);
    world.etcd.answer(&answer_probe());
    assert_eq!(world.etcd.value("/immutable-tags/app:v1"), None);
}

/// A call that only makes the fake etcd look at its clock.
fn answer_probe() -> Call {
    Call {
        cluster: "etcd".into(),
        headers: vec![(":path".into(), "/v3/none".into())],
        body: None,
        timeout_ms: 0,
        at_ms: 0,
    }
}

/// Issue 27, sequence 6 and issue 21, item 3: the filter's own write survives its client. An
/// override's decision is logged when it is made; its outcome when the registry answers.
#[test]
fn an_override_whose_client_leaves_is_logged_and_settled() {
    let world = World::new(ETCD_BG);
    let a = world.replica();
    assert_eq!(world.push(&a, V1, X, &[BOB]).status, 201);
    run_for(&world, &[&a], 1_000);
    let mut p = world.open_put(&a, V1, Y, &[ADMIN, REASON]);
    world.pump(&mut p, false);
    world.body(&mut p, Y, true);
    world.pump(&mut p, true);
    let decided =
        |h: &FakeHost| h.logs.borrow().iter().filter(|(_, l)| l.contains("break_glass_decision")).count();
    assert_eq!(decided(&p.h), 1, "logged when made");
    let line = p.h.logs.borrow().iter().find(|(_, l)| l.contains("break_glass_decision")).unwrap().1.clone();
    assert!(
        line.contains("\"principal\":\"admin\"") && line.contains(&sha(X)) && line.contains(&sha(Y)),
        "{line}"
    );
    p.f.on_done(&p.h); // the client left
    answer_orphan(&world, &a, &mut p);
    assert_eq!(world.reg.holds(V1), Some(sha(Y)));
    let outcome =
        a.root.logs.borrow().iter().any(|(_, l)| l.contains("\"event\":\"immutable_tags.break_glass\""));
    assert!(outcome, "the outcome is logged though the client left");
    run_for(&world, &[&a], 500);
    let v = world.etcd.value("/immutable-tags/app:v1").unwrap();
    assert!(v.contains(&sha(Y)) && !v.contains(" c "), "committed: {v}");
}

/// Issue 21, item 3: an unauthorised push that resets right after its body does not block the
/// tag: its write's answer (401) releases the claim at once.
#[test]
fn an_unauthorised_push_that_vanishes_does_not_block_the_tag() {
    let world = World::new(ETCD_BG);
    let a = world.replica();
    let mut p = world.open_put(&a, V1, Y, &[("authorization", "Bearer bob-readonly")]);
    world.pump(&mut p, false);
    world.body(&mut p, Y, true);
    world.pump(&mut p, true);
    p.f.on_done(&p.h);
    assert_eq!(
        (a.root.counter("claims_taken"), a.root.counter("claims_settled")),
        (1, 0),
        "one claim in flight"
    );
    answer_orphan(&world, &a, &mut p);
    assert_eq!(a.root.counter("claims_settled"), 1, "settled by the orphaned write's answer");
    run_for(&world, &[&a], 1_000);
    assert_eq!(world.push(&a, V1, X, &[BOB]).status, 201, "the pipeline's push a second later");
}

/// Issue 21, item 1: every tag a stored write named is committed, `?tag=` ones included.
#[test]
fn query_tags_of_a_stored_write_are_committed_not_released() {
    for policy in [SHARED, ETCD_BG] {
        let world = World::new(policy);
        let a = world.replica();
        let mut old = world.open_put(&a, "v2", Y, &[BOB]);
        world.pump(&mut old, false);
        world.body(&mut old, &Y[..Y.len() - 1], false);
        let r = {
            let len = X.len().to_string();
            let mut s = world.open(
                &a,
                "PUT",
                "/v2/app/manifests/v1?tag=v2",
                &[("content-type", OCI), ("content-length", &len), BOB],
            );
            world.pump(&mut s, false);
            world.body(&mut s, X, true);
            world.pump(&mut s, false);
            reply(&s)
        };
        assert_eq!(r.status, 201);
        run_for(&world, &[&a], 500);
        world.body(&mut old, &Y[Y.len() - 1..], true);
        world.pump(&mut old, false);
        assert_eq!(reply(&old).status, 409, "{policy}");
        assert_eq!(world.reg.holds("v2"), Some(sha(X)), "{policy}");
    }
}

/// Issue 21, item 2: a tag that vanished after a committed record (a delete race, or behind
/// the filter's back) is not "new" while the record lives.
#[test]
fn absent_after_a_commit_is_not_a_first_push() {
    for policy in [SHARED, ETCD_BG] {
        let world = World::new(policy);
        let a = world.replica();
        assert_eq!(world.push(&a, V1, X, &[BOB]).status, 201);
        run_for(&world, &[&a], 1_000);
        world.reg.tags.borrow_mut().remove(V1);
        let r = world.push(&a, V1, Y, &[BOB]);
        assert_eq!(r.status, 409, "{policy}");
        assert_eq!(world.reg.holds(V1), None, "{policy}");
    }
}

/// Issue 21, item 3: one client cannot fill the claim slots: past its bound of claims in
/// flight its pushes are refused (429), other clients' are not, and its own go again once its
/// writes are answered.
#[test]
fn claims_in_flight_are_bounded_per_client() {
    let world = World::new(SHARED);
    let a = world.replica();
    let max = crate::filter::worker::MAX_CLAIMS_PER_CLIENT;
    let mut held = Vec::new();
    for i in 0..max {
        let mut s = world.open_put(&a, &format!("t{i}"), X, &[BOB]);
        world.pump(&mut s, false);
        world.body(&mut s, X, true);
        world.pump(&mut s, true);
        assert_eq!(s.held_puts.len(), 1, "push {i} is written");
        held.push(s);
    }
    assert_eq!(world.push(&a, "one-more", X, &[BOB]).status, 429);
    let mut s = {
        let h = a.root.share_with();
        *h.source.borrow_mut() = Some("10.0.0.2:1234".into());
        let len = X.len().to_string();
        h.request("PUT", "/v2/app/manifests/other", &[("content-type", OCI), ("content-length", &len), BOB]);
        let mut f = Filter::new(Some(a.w.clone()));
        let p = Filter::first_look(&h).unwrap();
        f.on_request_headers(&h, p, false);
        Stream { h, f, held_puts: Vec::new() }
    };
    world.pump(&mut s, false);
    world.body(&mut s, X, true);
    world.pump(&mut s, false);
    assert_eq!(reply(&s).status, 201, "another client");
    for s in &mut held {
        world.answer_put(s);
    }
    assert_eq!(world.push(&a, "one-more", X, &[BOB]).status, 201, "answered: free again");
}

/// The one way a protected tag becomes new again: a delete the filter itself granted
/// (break-glass). After it, a first push of other content is no longer refused by the record.
#[test]
fn a_granted_delete_makes_the_tag_new_again() {
    for policy in [
        ETCD_BG,
        ETCD_BG
            .replace(
                r#""claims": {"etcd": {"cluster": "etcd", "authority": "etcd.test", "timeout_ms": 500}}"#,
                r#""claims": {}"#,
            )
            .as_str(),
    ] {
        let world = World::new(policy);
        let a = world.replica();
        assert_eq!(world.push(&a, V1, X, &[BOB]).status, 201);
        run_for(&world, &[&a], 500);
        let mut d = world.open(&a, "DELETE", "/v2/app/manifests/v1", &[ADMIN, REASON]);
        assert!(d.h.reply().is_none(), "granted: {:?}", d.h.reply());
        world.reg.tags.borrow_mut().remove(V1);
        *d.h.response_headers.borrow_mut() = vec![(":status".into(), "202".into())];
        d.f.on_response_headers(&d.h);
        run_for(&world, &[&a], 500);
        assert_eq!(world.push(&a, V1, Y, &[BOB]).status, 201, "{policy}");
        assert_eq!(world.reg.holds(V1), Some(sha(Y)));
    }
}

/// Found by the simulation (seed 111888): a replica claims, sends its write and dies before
/// committing; another push's "absent" view taken between that claim and the write's landing
/// must not outlive the dead claim's record (views are trusted for half a TTL).
#[test]
fn a_view_taken_while_a_dead_replicas_write_was_in_flight_is_not_trusted_past_its_claim() {
    let world = World::new(ETCD_BG);
    let (mut a, b) = (world.replica(), world.replica());
    let mut pa = world.open_put(&a, V1, X, &[BOB]);
    world.pump(&mut pa, false);
    world.body(&mut pa, X, true);
    world.pump(&mut pa, true);
    assert_eq!(pa.held_puts.len(), 1, "A claimed and sent its write");
    a.dead = true;
    world.advance(5_000);
    let mut pb = world.open_put(&b, V1, Y, &[BOB]);
    world.pump(&mut pb, false); // HEAD: absent
    let token = pa.held_puts.remove(0);
    world.reg.answer(&pa.h.call_of(token)); // A's write lands; nobody hears of it
    world.advance(56_000);
    world.body(&mut pb, Y, true);
    world.pump(&mut pb, false);
    assert_ne!(reply(&pb).status, 201);
    assert_eq!(world.reg.holds(V1), Some(sha(X)));
}

/// Hole A (attack 3): a full shared-data slot must never evict a live committed record, or
/// "absent" passes again and an override can be undone (colliding tags are easy to find).
mod slot_full {
    use super::*;
    use crate::store::claims::slot_index;

    const V1: &str = "v1";
    const SHARED_BG: &str = r#"{"upstream": {"cluster": "registry"}, "global": {"immutable_tags": true},
  "break_glass": {"principals": ["admin"], "repositories": ["app"], "actions": ["overwrite", "delete"]}}"#;

    /// Tags of `app` whose records land in the same shared-data slot as `app:v1` (default 1024
    /// slots), under the world's slot key (an attacker who knew it; see `claims`).
    fn colliding(world: &World, n: usize) -> Vec<String> {
        let key = super::super::claims::slot_key_of(world);
        let target = slot_index(&key, "app", V1, 1024);
        (0..)
            .map(|i| format!("c{i}"))
            .filter(|t| slot_index(&key, "app", t, 1024) == target)
            .take(n)
            .collect()
    }
    /// and committed; the attacker (push rights to any protected tag of the same slot) commits 16
    /// colliding tags: the committed record of v1 is evicted, and the held push of Y is stored over X.
    #[test]
    fn attack_slot_eviction_lets_absent_overwrite_a_new_tag() {
        let world = World::new(SHARED_BG);
        let a = world.replica();
        let mut p2 = world.open_put(&a, V1, Y, &[BOB]);
        world.pump(&mut p2, false); // HEAD: absent
        world.body(&mut p2, &Y[..Y.len() - 1], false);
        assert_eq!(world.push(&a, V1, X, &[BOB]).status, 201, "the legitimate first push");
        // v1's record and 15 others fill the slot; the 16th is refused, nothing is evicted.
        let ts = colliding(&world, 16);
        for t in &ts[..15] {
            assert_eq!(world.push(&a, t, X, &[BOB]).status, 201);
        }
        assert_eq!(world.push(&a, &ts[15], X, &[BOB]).status, 503, "slot full: refused, not evicted");
        world.advance(1_000);
        world.body(&mut p2, &Y[Y.len() - 1..], true);
        world.pump(&mut p2, false);
        let hist: Vec<_> = world.reg.history.borrow().iter().filter(|(t, _)| t == V1).cloned().collect();
        assert_eq!(world.reg.holds(V1), Some(sha(X)), "the tag was overwritten: {hist:?}");
    }

    /// B: an override is undone: worker B's map says X (learned before the override through A);
    /// the override's record is evicted; B's same-digest push of X is let through on the map's word.
    #[test]
    fn attack_slot_eviction_undoes_an_override() {
        let world = World::new(SHARED_BG);
        let a = world.replica();
        // A second worker of the same Envoy: its own map, the same shared data.
        let b = Replica {
            root: a.root.share_with(),
            w: Rc::new(Worker::new(&a.root, Config::from_json(SHARED_BG.as_bytes()).unwrap())),
            dead: false,
        };
        b.w.registry_auth.set(Some((true, b.root.now_ms())));
        assert_eq!(world.push(&a, V1, X, &[BOB]).status, 201);
        assert_eq!(world.push(&b, V1, X, &[BOB]).status, 201, "B learns X (identical re-push)");
        world.advance(1_000);
        assert_eq!(world.push(&a, V1, Y, &[ADMIN, REASON]).status, 201, "the override");
        world.advance(1_000);
        // v1's record and 15 others fill the slot; the 16th is refused, nothing is evicted.
        let ts = colliding(&world, 16);
        for t in &ts[..15] {
            assert_eq!(world.push(&a, t, X, &[BOB]).status, 201);
        }
        assert_eq!(world.push(&a, &ts[15], X, &[BOB]).status, 503, "slot full: refused, not evicted");
        let r = world.push(&b, V1, X, &[BOB]);
        let hist: Vec<_> = world.reg.history.borrow().iter().filter(|(t, _)| t == V1).cloned().collect();
        assert_eq!(r.status, 409, "the override's committed record still fences the map's stale X");
        assert_eq!(world.reg.holds(V1), Some(sha(Y)), "override undone: {hist:?}");
    }

    /// A': the eviction needs no stored write: 16 read-only pushes to colliding tags, in flight
    /// at once (one HTTP/2 connection: one worker), evict the committed record; all get 401.
    #[test]
    fn attack_read_only_claims_in_flight_evict_a_committed_record() {
        const RO: (&str, &str) = ("authorization", "Bearer bob-readonly");
        let world = World::new(SHARED_BG);
        let a = world.replica();
        let mut p2 = world.open_put(&a, V1, Y, &[BOB]);
        world.pump(&mut p2, false); // HEAD: absent
        world.body(&mut p2, &Y[..Y.len() - 1], false);
        assert_eq!(world.push(&a, V1, X, &[BOB]).status, 201, "the legitimate first push");
        let mut held = Vec::new();
        let ts = colliding(&world, 16);
        for t in &ts[..15] {
            let mut s = world.open_put(&a, t, X, &[RO]);
            world.pump(&mut s, false);
            world.body(&mut s, X, true);
            world.pump(&mut s, true);
            held.push(s);
        }
        assert_eq!(world.push(&a, &ts[15], X, &[RO]).status, 503, "slot full: refused, not evicted");
        for s in &mut held {
            world.answer_put(s);
            assert_eq!(reply(s).status, 401);
        }
        world.body(&mut p2, &Y[Y.len() - 1..], true);
        world.pump(&mut p2, false);
        let hist: Vec<_> = world
            .reg
            .history
            .borrow()
            .iter()
            .filter(|(t, _)| t == V1)
            .map(|(_, d)| d[7..15].to_string())
            .collect();
        assert_eq!(world.reg.holds(V1), Some(sha(X)), "overwritten: {hist:?}");
    }
}

/// Hole D (attack 3): a release whose etcd delete loses its compare must be re-applied on the
/// record it lost to, never read as "the key is gone".
mod lost_release {
    use super::*;
    const V1: &str = "v1";

    #[test]
    fn attack_lost_release_lets_a_read_only_client_block_a_new_tag() {
        const RO: (&str, &str) = ("authorization", "Bearer bob-readonly");
        let world = World::new(ETCD_BG);
        let a = world.replica();
        run_for(&world, &[&a], 500);
        let mut p1 = world.open_put(&a, V1, X, &[RO]);
        world.pump(&mut p1, false);
        world.body(&mut p1, X, true);
        world.pump(&mut p1, false);
        assert_eq!(reply(&p1).status, 401);
        // The root's tick: the release reads the record; its answer sends the delete.
        world.advance(250);
        crate::filter::claims::etcd::tick(&a.root, &a.w);
        let read = a.root.pending.borrow_mut().pop_front().unwrap();
        let r = world.etcd.answer(&a.root.call_of(read));
        let size = r.body.len();
        a.root.set_answer(Some(r));
        root_response(&a.root, &a.w, read, size);
        a.root.set_answer(None);
        // Meanwhile a second read-only push of X joins the claim (holders 1 -> 2).
        let mut p2 = world.open_put(&a, V1, X, &[RO]);
        world.pump(&mut p2, false);
        world.body(&mut p2, X, true);
        world.pump(&mut p2, true);
        assert_eq!(p2.held_puts.len(), 1, "P2 joined the claim");
        world.answer_root(&a); // the delete loses its compare: read as "gone"
        world.answer_put(&mut p2);
        assert_eq!(reply(&p2).status, 401);
        run_for(&world, &[&a], 1_000);
        println!("record: {:?}", world.etcd.value("/immutable-tags/app:v1"));
        run_for(&world, &[&a], 1_000);
        let r = world.push(&a, V1, Y, &[BOB]);
        assert_eq!(r.status, 201, "blocked by a hold nobody owns: {}", String::from_utf8_lossy(&r.body));
    }
}

/// Hole C (attack 3): a write the registry stored but answered 5xx (a proxy's 502, Envoy's 503
/// for a reset after sending, a 500 after the tag link) is an unknown outcome: its claim stays.
mod stored_5xx {
    use super::*;
    const V1: &str = "v1";
    const SHARED_BG: &str = r#"{"upstream": {"cluster": "registry"}, "global": {"immutable_tags": true},
  "break_glass": {"principals": ["admin"], "repositories": ["app"], "actions": ["overwrite", "delete"]}}"#;

    #[test]
    fn attack_stored_write_answered_5xx_releases_the_claim() {
        for status in [500u16, 502, 503] {
            for policy in [SHARED_BG, ETCD_BG] {
                let world = World::new(policy);
                let a = world.replica();
                let mut p2 = world.open_put(&a, V1, Y, &[BOB]);
                world.pump(&mut p2, false); // HEAD: absent
                world.body(&mut p2, &Y[..Y.len() - 1], false);
                let mut p1 = world.open_put(&a, V1, X, &[BOB]);
                world.pump(&mut p1, false);
                world.body(&mut p1, X, true);
                world.pump(&mut p1, true);
                let token = p1.held_puts.remove(0);
                world.reg.answer(&p1.h.call_of(token)); // stored...
                deliver(
                    &mut p1,
                    token,
                    answer(status, &[], b"upstream connect error or disconnect/reset before headers"),
                );
                run_for(&world, &[&a], 500);
                world.body(&mut p2, &Y[Y.len() - 1..], true);
                world.pump(&mut p2, false);
                let hist: Vec<_> = world
                    .reg
                    .history
                    .borrow()
                    .iter()
                    .filter(|(t, _)| t == V1)
                    .map(|(_, d)| d[7..15].to_string())
                    .collect();
                assert_eq!(
                    world.reg.holds(V1),
                    Some(sha(X)),
                    "{status}: the stored X was overwritten: {hist:?}"
                );
            }
        }
    }
}

/// Hole E (attack 3): orphans (writes whose client left) are never dropped unsettled, so a
/// read-only client's claim is released when the registry's 401 arrives, however many vanish.
mod orphan_overflow {
    use super::*;
    const V1: &str = "v1";
    const SHARED_BG: &str = r#"{"upstream": {"cluster": "registry"}, "global": {"immutable_tags": true},
  "break_glass": {"principals": ["admin"], "repositories": ["app"], "actions": ["overwrite", "delete"]}}"#;

    #[test]
    fn attack_orphan_overflow_keeps_a_read_only_claim() {
        const RO: (&str, &str) = ("authorization", "Bearer bob-readonly");
        let world = World::new(SHARED_BG);
        let a = world.replica();
        let open_from = |tag: &str, src: String| {
            let h = a.root.share_with();
            *h.source.borrow_mut() = Some(src);
            let len = X.len().to_string();
            h.request(
                "PUT",
                &format!("/v2/app/manifests/{tag}"),
                &[("content-type", OCI), ("content-length", &len), RO],
            );
            let mut f = Filter::new(Some(a.w.clone()));
            let p = Filter::first_look(&h).unwrap();
            f.on_request_headers(&h, p, false);
            Stream { h, f, held_puts: Vec::new() }
        };
        let mut all = Vec::new();
        // As many as a worker keeps (`claims`: one more is refused).
        for i in 0..crate::filter::worker::MAX_ORPHANS {
            let tag = if i == 0 { V1.to_string() } else { format!("junk{i}") };
            let mut s = open_from(&tag, format!("10.9.{}.{}:1", i / 16, i % 16));
            world.pump(&mut s, false);
            world.body(&mut s, X, true);
            world.pump(&mut s, true);
            assert_eq!(s.held_puts.len(), 1, "push {i} written");
            s.f.on_done(&s.h); // the client vanishes
            all.push(s);
        }
        for s in &mut all {
            answer_orphan(&world, &a, s); // 401s, settled from the root (the first is no orphan any more)
        }
        world.advance(5_000);
        let r = world.push(&a, V1, Y, &[BOB]);
        assert_eq!(r.status, 201);
    }
}

// ---- Issue 27, hole B: claims order views and committed changes by the store's own counter (etcd's
// revision, a shared-data slot's write counter), never by wall clock. Replicas whose clocks
// disagree, or a clock that steps back, must not let a view taken before an override pass
// as newer than it.

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

// ---- Issue 27, "nothing lingers": a hold whose push never settles (its write answered 5xx, the
// outcome unknown; or its client left while the claim's call was out) has an age of its own,
// so identical re-pushes that keep the tag's record fresh do not carry it forward forever.

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
        let mut ps: Vec<_> = [("authorization", "Bearer bob-readonly"), BOB]
            .iter()
            .map(|h| {
                let mut p = world.open_put(&a, V1, X, &[*h]);
                world.pump(&mut p, true);
                world.body(&mut p, X, true);
                world.pump(&mut p, true);
                assert_eq!(p.held_puts.len(), 1);
                world.advance(100);
                p
            })
            .collect();
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

// ---- Late changes from the root queue or a late answer (an attacker's read of the merged claims
// protocol): a forget or a commit that lands after a newer change must not erase or outrank it.

/// A granted (break-glass) delete's `forget` erases whatever committed change it finds when it
/// finally lands, even one committed after the delete (a re-push of the tag). A stale "absent"
/// view then overwrites the re-pushed tag without break-glass.
#[test]
fn atk_late_forget_erases_a_later_commit() {
    {
        let etcd = true;
        let world = World::new(ETCD_BG);
        let (a, b) = (world.replica(), world.replica());
        assert_eq!(world.push(&a, V1, X, &[BOB]).status, 201);
        run_for(&world, &[&a, &b], 500);
        // Admin deletes v1 through A (break-glass, logged).
        let mut d = world.open(&a, "DELETE", "/v2/app/manifests/v1", &[ADMIN, REASON]);
        assert!(d.h.reply().is_none(), "granted: {:?}", d.h.reply());
        world.reg.tags.borrow_mut().remove(V1);
        world.reg.history.borrow_mut().push((V1.into(), String::new()));
        *d.h.response_headers.borrow_mut() = vec![(":status".into(), "202".into())];
        d.f.on_response_headers(&d.h);
        // A's forget is queued; its etcd calls are slow (A does not get to it for a while).
        // Bob's push F of Y through B: HEAD now says absent; its last byte is held.
        let mut f = world.open_put(&b, V1, Y, &[BOB]);
        world.pump(&mut f, false);
        world.body(&mut f, &Y[..Y.len() - 1], false);
        world.pump(&mut f, false);
        // Bob re-pushes X through B: a first push of the (now absent) tag, committed.
        assert_eq!(world.push(&b, V1, X, &[BOB]).status, 201);
        run_for(&world, &[&b], 500);
        // A's forget lands now.
        run_for(&world, &[&a, &b], 500);
        // F's stale "absent" view is 1.x s old (well within half the TTL).
        world.body(&mut f, &Y[Y.len() - 1..], true);
        world.pump(&mut f, false);
        let r = reply(&f);
        eprintln!(
            "etcd={etcd} F: {} {}; history {:?}",
            r.status,
            String::from_utf8_lossy(&r.body),
            world.reg.history.borrow()
        );
        assert_eq!(world.reg.holds(V1), Some(sha(X)), "v1 changed X -> Y without break-glass");
    }
}

/// The same with every replica ticking normally (etcd): A's forget reads the record, its
/// rewrite reaches etcd after B's re-push committed (a late call): the compare fails, the
/// forget is applied again to what it finds, the new commit. Shared data: the delete's 202
/// reaches the filter after the re-push committed (forget is applied at the answer).
#[test]
fn atk_forget_reapplied_to_a_later_commit() {
    let mut broken = Vec::new();
    for policy in [ETCD_BG, SHARED_BG] {
        let etcd = policy == ETCD_BG;
        let world = World::new(policy);
        let (a, b) = (world.replica(), world.replica());
        let b = &b; // shared data: another worker of the same Envoy (same process, same shared data)
        assert_eq!(world.push(&a, V1, X, &[BOB]).status, 201);
        run_for(&world, &[&a, b], 500);
        let mut d = world.open(&a, "DELETE", "/v2/app/manifests/v1", &[ADMIN, REASON]);
        assert!(d.h.reply().is_none(), "granted: {:?}", d.h.reply());
        world.reg.tags.borrow_mut().remove(V1);
        world.reg.history.borrow_mut().push((V1.into(), String::new()));
        let mut held = Vec::new();
        if etcd {
            *d.h.response_headers.borrow_mut() = vec![(":status".into(), "202".into())];
            d.f.on_response_headers(&d.h);
            world.advance(250);
            // A's tick: the forget's read is answered, its write is sent and travels slowly.
            crate::filter::claims::etcd::tick(&a.root, &a.w);
            loop {
                let Some(token) = a.root.pending.borrow_mut().pop_front() else { break };
                let call = a.root.call_of(token);
                let body = String::from_utf8_lossy(call.body.as_deref().unwrap_or_default()).to_string();
                if body.contains("\"target\":\"MOD\"") {
                    held.push(token);
                    continue;
                }
                let reply = world.etcd.answer(&call);
                let size = reply.body.len();
                a.root.set_answer(Some(reply));
                root_response(&a.root, &a.w, token, size);
                a.root.set_answer(None);
                crate::filter::claims::etcd::tick(&a.root, &a.w);
            }
            assert_eq!(held.len(), 1, "the forget's write is in flight");
        }
        let mut f = world.open_put(b, V1, Y, &[BOB]);
        world.pump(&mut f, false);
        world.body(&mut f, &Y[..Y.len() - 1], false);
        world.pump(&mut f, false);
        assert_eq!(world.push(b, V1, X, &[BOB]).status, 201, "a first push of the tag again");
        run_for(&world, &[b], 500);
        if etcd {
            for token in held {
                let call = a.root.call_of(token);
                let reply = world.etcd.answer(&call);
                let size = reply.body.len();
                a.root.set_answer(Some(reply));
                root_response(&a.root, &a.w, token, size);
                a.root.set_answer(None);
            }
            world.answer_root(&a);
        } else {
            *d.h.response_headers.borrow_mut() = vec![(":status".into(), "202".into())];
            d.f.on_response_headers(&d.h);
        }
        run_for(&world, &[&a, b], 500);
        world.body(&mut f, &Y[Y.len() - 1..], true);
        world.pump(&mut f, false);
        let r = reply(&f);
        eprintln!(
            "etcd={etcd} F: {} {}; history {:?}",
            r.status,
            String::from_utf8_lossy(&r.body),
            world.reg.history.borrow()
        );
        if world.reg.holds(V1) != Some(sha(X)) {
            broken.push(etcd);
        }
    }
    assert!(broken.is_empty(), "v1 changed X -> Y without break-glass (etcd?): {broken:?}");
}

#[test]
fn atk_stale_commit_undoes_an_override() {
    let world = World::new(ETCD_BG);
    let (a, b) = (world.replica(), world.replica());
    // A: first push of X; the client has its 201; A's root context stalls before its tick.
    assert_eq!(world.push(&a, V1, X, &[BOB]).status, 201);
    run_for(&world, &[&b], 125_000); // A stalls (> 2 TTLs): X's hold record ends by its lease
                                     // Bob's push S of X through B: HEAD says X; last byte held.
    let mut s = world.open_put(&b, V1, X, &[BOB]);
    world.pump(&mut s, false);
    world.body(&mut s, &X[..X.len() - 1], false);
    world.pump(&mut s, false);
    world.advance(100);
    // Admin's logged override X -> Y through B.
    let o = world.push(&b, V1, Y, &[ADMIN, REASON]);
    assert_eq!(o.status, 201, "{}", String::from_utf8_lossy(&o.body));
    run_for(&world, &[&b], 500);
    // A resumes: its queued commit of X goes.
    run_for(&world, &[&a, &b], 1_000);
    eprintln!("record {:?}", world.etcd.value("/immutable-tags/app:v1"));
    world.body(&mut s, &X[X.len() - 1..], true);
    world.pump(&mut s, false);
    let r = reply(&s);
    eprintln!(
        "S: {} {}; history {:?}",
        r.status,
        String::from_utf8_lossy(&r.body),
        world.reg.history.borrow()
    );
    assert_eq!(world.reg.holds(V1), Some(sha(Y)), "the override was undone without break-glass");
}

/// A digest delete's granted tags are learned by HEAD; its `before` is read later (at the
/// grant). A tag overridden (X -> Y, committed) in between is not removed by the registry (it
/// no longer holds X); its forget must not erase Y, else a held push of X with a view from
/// before the override passes and undoes it (both stores erased it before the forget named its
/// digest). `deleted`: the registry's answer to the delete (404: no forget at all, the control).
fn override_during_a_digest_delete(etcd: bool, deleted: &str) {
    let world = World::new(if etcd { ETCD_BG } else { SHARED_BG });
    let (a, b) = (world.replica(), world.replica());
    let settle = |ms| if etcd { run_for(&world, &[&a, &b], ms) } else { world.advance(100) };
    assert_eq!(world.push(&a, V1, X, &[BOB]).status, 201);
    assert_eq!(world.push(&a, "v2", X, &[BOB]).status, 201);
    settle(500);
    // S: Bob's push of X to v1 (HEAD says X), last byte held.
    let mut s = world.open_put(&b, V1, X, &[BOB]);
    world.pump(&mut s, false);
    world.body(&mut s, &X[..X.len() - 1], false);
    world.pump(&mut s, false);
    // Admin's digest delete of X: tags/list, then HEADs of v1 and v2, answered one by one.
    let mut d = world.open(&a, "DELETE", &format!("/v2/app/manifests/{}", sha(X)), &[ADMIN, REASON]);
    let mut overridden = false;
    loop {
        let Some(token) = d.h.pending.borrow_mut().pop_front() else { break };
        let call = d.h.call_of(token);
        let path = call.header(":path").unwrap_or_default().to_string();
        let reply = if call.cluster == "etcd" { world.etcd.answer(&call) } else { world.reg.answer(&call) };
        deliver(&mut d, token, reply);
        if path.ends_with("/manifests/v1") && !overridden {
            overridden = true;
            // Admin's logged override of v1 X -> Y, committed (etcd: through A, whose order
            // then covers it; shared data: through B).
            let o = world.push(if etcd { &a } else { &b }, V1, Y, &[ADMIN, REASON]);
            assert_eq!(o.status, 201, "{}", String::from_utf8_lossy(&o.body));
            settle(500);
        }
    }
    assert!(overridden);
    assert!(d.h.reply().is_none(), "granted: {:?}", d.h.reply());
    if deleted == "202" {
        // The registry deletes manifest X: only v2 still holds it.
        let gone: Vec<String> =
            world.reg.tags.borrow().iter().filter(|(_, g)| **g == sha(X)).map(|(t, _)| t.clone()).collect();
        for t in gone {
            world.reg.tags.borrow_mut().remove(&t);
            world.reg.history.borrow_mut().push((t, String::new()));
        }
    }
    *d.h.response_headers.borrow_mut() = vec![(":status".into(), deleted.into())];
    *d.h.code_details.borrow_mut() = Some("via_upstream".into());
    d.f.on_response_headers(&d.h);
    d.f.on_done(&d.h);
    settle(1_000);
    world.body(&mut s, &X[X.len() - 1..], true);
    world.pump(&mut s, false);
    let r = reply(&s);
    assert_ne!(r.status, 201, "history {:?}", world.reg.history.borrow());
    assert_eq!(world.reg.holds(V1), Some(sha(Y)), "the override was undone without break-glass");
}

#[test]
fn a_digest_delete_does_not_forget_an_override_made_during_its_check() {
    override_during_a_digest_delete(false, "202");
    override_during_a_digest_delete(true, "202");
}

#[test]
fn an_override_during_a_digest_delete_the_registry_refused_stands() {
    override_during_a_digest_delete(false, "404");
}

// ---- Releases retried by the root queue (an attacker's read of the etcd failover): a release
// whose attempt may have landed is never applied again, so it cannot take another push's
// hold (both failed before the fix: two digests stored to one tag).

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
