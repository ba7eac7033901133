//! Claims in shared data (one Envoy's workers, no etcd): CAS conflicts and their bound, one
//! winner among concurrent pushes, a stored push's committed record, releases; and issue 27's
//! bounds: the shared-data slot hash is keyed with a secret every worker of one Envoy shares
//! (an attacker cannot compute colliding tags), and writes whose client left ("orphans") are
//! bounded per worker.
use super::fake::Process;
use super::world::{sha, World, BOB, OCI, SHARED, X, Y};
use super::*;
use crate::filter::claims::shared_data::{self, SLOT_KEY};
use crate::filter::host::{Host, SharedError};
use crate::filter::Filter;
use crate::store::claims::{self, decode_slot_key, encode_slot_key, slot_index, Slot, SlotKey};

/// The unkeyed hash the slots used before (FNV-1a of `repository:tag`): anyone could compute
/// tags that land in one slot.
fn fnv_slot(repository: &str, tag: &str, slots: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in repository.bytes().chain(*b":").chain(tag.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h % slots
}

/// The attacker fills v1's slot (16 live records, as computed offline) with first pushes of
/// throwaway tags: v1's own first push is then refused 503 (a denial of service).
#[test]
fn tags_computed_to_collide_offline_do_not_fill_a_protected_tags_slot() {
    let world = World::new(SHARED);
    let a = world.replica();
    let target = fnv_slot("app", "v1", 1024);
    let colliding: Vec<String> =
        (0..).map(|i| format!("c{i}")).filter(|t| fnv_slot("app", t, 1024) == target).take(16).collect();
    for t in &colliding {
        assert_eq!(world.push(&a, t, X, &[BOB]).status, 201);
    }
    let r = world.push(&a, "v1", Y, &[BOB]);
    assert_eq!(r.status, 201, "v1's slot was filled by tags computed offline: {:?}", r.json());
    assert_eq!(world.reg.holds("v1"), Some(sha(Y)));
}

/// The slot key the world's Envoy holds in shared data.
pub fn slot_key_of(world: &World) -> SlotKey {
    let shared = world.clock.process.shared.borrow();
    let (bytes, _) = shared.get(SLOT_KEY).expect("the slot key was created");
    decode_slot_key(bytes).expect("a well-formed slot key")
}

/// The slot (its shared-data key) holding the record of `app:tag`, if any.
fn slot_holding(world: &World, tag: &str) -> Option<String> {
    let shared = world.clock.process.shared.borrow();
    shared
        .iter()
        .find(|(_, (v, _))| Slot::decode(v).records.iter().any(|r| r.repository == "app" && r.tag == tag))
        .map(|(k, _)| k.clone())
}

/// Every worker of one Envoy hashes with the same key, created once: the first worker draws
/// it, the others read it, and a record lands where the key says.
#[test]
fn the_slot_key_is_created_once_and_shared_by_every_worker() {
    let world = World::new(SHARED);
    let a = world.replica();
    let key = slot_key_of(&world);
    let b = world.replica(); // a second worker of the same Envoy
    assert_eq!(world.clock.process.random_draws.get(), 1, "drawn once");
    assert_eq!(slot_key_of(&world), key, "not replaced by the second worker");
    assert_eq!(world.push(&b, "v1", X, &[BOB]).status, 201);
    assert_eq!(slot_holding(&world, "v1"), Some(claims::slot_key(1024, slot_index(&key, "app", "v1", 1024))));
    assert_eq!(world.push(&a, "v1", Y, &[BOB]).status, 409, "worker a finds b's record");
}

/// Two workers race to create the key: the one that loses (another created it between its read
/// and its write) does not replace it; it hashes with the winner's.
#[test]
fn a_worker_that_loses_the_race_to_create_the_key_uses_the_winners() {
    let world = World::new(SHARED);
    let h = world.clock.share_with();
    let winner = encode_slot_key(&[9; 16]);
    // Another worker writes first (its slots too, so tokens are past 1), between this read and write.
    *h.intruder.borrow_mut() = Some(Box::new(move |p: &Process| {
        let n = p.next_cas.get();
        p.shared.borrow_mut().insert("other".into(), (Vec::new(), n + 1));
        p.shared.borrow_mut().insert(SLOT_KEY.into(), (winner, n + 2));
        p.next_cas.set(n + 2);
    }));
    assert_eq!(shared_data::slot_key(&h), Ok([9; 16]));
    assert_eq!(slot_key_of(&world), [9; 16], "the winner's key stays");
}

/// The first write a process ever makes takes token 1: a key created then must still never be
/// replaced (the mark takes token 1 first).
#[test]
fn a_key_created_as_the_first_write_of_the_process_is_never_replaced() {
    let world = World::new(SHARED);
    let h = world.clock.share_with();
    let first = shared_data::slot_key(&h).unwrap();
    let other = world.clock.share_with();
    // A worker that read "missing" before the key existed now creates it: it must fail.
    let k2 = [5u8; 16];
    other.shared_set("immutable-tags/claims/slot-key-mark", b"", 0).unwrap();
    let r = other.shared_set(SLOT_KEY, &encode_slot_key(&k2), 1);
    assert_eq!(r, Err(SharedError::CasMismatch));
    assert_eq!(shared_data::slot_key(&other), Ok(first));
}

/// A key that cannot be read, drawn or is malformed refuses the push (503), never hashes
/// without it.
#[test]
fn no_key_no_claim() {
    for how in ["unreadable", "no random", "malformed"] {
        let world = World::new(SHARED);
        let a = world.replica();
        match how {
            "unreadable" => world.clock.process.unreadable_shared.borrow_mut().push(SLOT_KEY.into()),
            "no random" => {
                world.clock.process.shared.borrow_mut().remove(SLOT_KEY);
                world.clock.process.random_fails.set(true);
            }
            _ => {
                world
                    .clock
                    .process
                    .shared
                    .borrow_mut()
                    .insert(SLOT_KEY.into(), (b"slot-key/1 00".to_vec(), 7));
            }
        }
        let r = world.push(&a, "v1", X, &[BOB]);
        assert_eq!(r.status, 503, "{how}: {:?}", r.json());
        assert!(
            r.json()["errors"][0]["message"].as_str().unwrap_or("").contains("claim slots' key"),
            "{how}: {:?}",
            r.json()
        );
        assert_eq!(world.reg.holds("v1"), None, "{how}");
    }
}

/// Writes whose client left wait on the worker for the registry's answer ("orphans"; never
/// dropped unsettled). Their number is bounded: once `MAX_ORPHANS` wait, a new protected write
/// is refused (503, saying why) rather than the list growing; once one is answered, writes go
/// again. The counters say how many are waiting.
#[test]
fn orphans_are_bounded_new_writes_refused_while_the_list_is_full() {
    use super::world::{answer_orphan, Stream};
    use crate::filter::worker::MAX_ORPHANS;
    let world = World::new(SHARED);
    let a = world.replica();
    let mut orphans: Vec<Stream> = Vec::new();
    for i in 0..MAX_ORPHANS {
        // Many clients (one client may hold only so many claims).
        let h = a.root.share_with();
        *h.source.borrow_mut() = Some(format!("10.8.{}.{}:1", i / 200, i % 200));
        let len = X.len().to_string();
        h.request(
            "PUT",
            &format!("/v2/app/manifests/t{i}"),
            &[("content-type", OCI), ("content-length", &len), BOB],
        );
        let mut f = Filter::new(Some(a.w.clone()));
        f.on_request_headers(&h, Filter::first_look(&h).unwrap(), false);
        let mut s = Stream { h, f, held_puts: Vec::new() };
        world.pump(&mut s, false);
        world.body(&mut s, X, true);
        world.pump(&mut s, true);
        assert_eq!(s.held_puts.len(), 1, "push {i} written");
        s.f.on_done(&s.h); // the client vanishes during the write
        orphans.push(s);
    }
    assert_eq!(a.w.pending.orphans.borrow().len(), MAX_ORPHANS);
    assert_eq!(a.root.counter("writes_orphaned") - a.root.counter("orphans_settled"), MAX_ORPHANS as u64);
    let r = world.push(&a, "v1", Y, &[BOB]);
    assert_eq!(r.status, 503, "{:?}", r.json());
    let msg = r.json()["errors"][0]["message"].as_str().unwrap_or("").to_string();
    assert!(msg.contains("writes whose client left"), "{msg}");
    assert_eq!(world.reg.holds("v1"), None);
    assert_eq!(a.w.pending.orphans.borrow().len(), MAX_ORPHANS, "not grown");
    answer_orphan(&world, &a, &mut orphans[0]);
    assert_eq!(a.root.counter("orphans_settled"), 1);
    assert_eq!(world.push(&a, "v1", Y, &[BOB]).status, 201, "room again");
}

// ---- Claims in shared data on one Envoy: CAS conflicts, one winner, committed records, releases.

#[test]
fn claims_retry_on_every_cas_conflict_and_give_up_after_the_bound() {
    let h = FakeHost::new();
    let w = worker(&h, POLICY);
    h.process.forced_cas_mismatches.set(5);
    assert_eq!(push(&h, &w, "v1", M1, None).status, 201);
    assert_eq!(h.process.forced_cas_mismatches.get(), 0, "every forced conflict was met and retried");
    let h2 = h.share_with();
    h2.process.forced_cas_mismatches.set(1000);
    let r = push(&h2, &w, "v2", M1, None);
    assert_eq!(r.status, 503);
    assert!(r.json()["errors"][0]["message"].as_str().unwrap().contains("still contended"));
    assert!(h2.calls_with("PUT").is_empty());
}

#[test]
fn a_claim_written_between_read_and_swap_is_seen_not_overwritten() {
    // Worker B reads the slot, worker A claims the tag before B's compare-and-swap: B's write
    // must fail, and B must then see A's claim.
    let a = FakeHost::new();
    let w = worker(&a, POLICY);
    let b = a.share_with();
    let wa = w.clone();
    let mut fb = Filter::new(Some(w.clone()));
    put_headers(&mut fb, &b, "v1", M2);
    respond(&mut fb, &b, head_answer(None));
    let a2 = a.share_with();
    *b.intruder.borrow_mut() = Some(Box::new(move |_| {
        let mut fa = Filter::new(Some(wa));
        put_headers(&mut fa, &a2, "v1", M1);
        respond(&mut fa, &a2, head_answer(None));
        send_body(&mut fa, &a2, &[M1]);
        assert_eq!(a2.calls_with("PUT").len(), 1, "A holds the claim and is writing");
    }));
    send_body(&mut fb, &b, &[M2]);
    let r = b.reply().unwrap();
    assert_eq!(r.status, 409);
    assert_eq!(r.json()["errors"][0]["detail"]["current_digest"], sha(M1));
    assert!(r.json()["errors"][0]["detail"]["in_flight"].is_string());
    assert!(b.calls_with("PUT").is_empty());
}

#[test]
fn concurrent_pushes_of_different_manifests_to_a_new_tag_have_one_winner() {
    let h = FakeHost::new();
    let w = worker(&h, POLICY);
    let hosts: Vec<FakeHost> = (0..8).map(|_| h.share_with()).collect();
    let mut filters: Vec<Filter> = hosts.iter().map(|_| Filter::new(Some(w.clone()))).collect();
    let bodies: Vec<Vec<u8>> = (0..8).map(|i| format!("{{\"n\":{i}}}").into_bytes()).collect();
    for ((f, h), b) in filters.iter_mut().zip(&hosts).zip(&bodies) {
        put_headers(f, h, "v1", b);
        respond(f, h, head_answer(None));
    }
    for ((f, h), b) in filters.iter_mut().zip(&hosts).zip(&bodies) {
        send_body(f, h, &[b]);
    }
    let writers: Vec<usize> =
        hosts.iter().enumerate().filter(|(_, h)| !h.calls_with("PUT").is_empty()).map(|(i, _)| i).collect();
    assert_eq!(writers, vec![0]);
    for h in &hosts[1..] {
        assert_eq!(h.reply().unwrap().status, 409);
    }
}

/// Every claim record in the fake process's shared data, decoded.
fn records(h: &FakeHost) -> Vec<crate::store::claims::Record> {
    h.process
        .shared
        .borrow()
        .values()
        .flat_map(|(v, _)| crate::store::claims::Slot::decode(v).records)
        .collect()
}

#[test]
fn a_stored_push_turns_its_claim_into_a_committed_record() {
    let h = FakeHost::new();
    let w = worker(&h, POLICY);
    assert_eq!(push(&h, &w, "v1", M1, None).status, 201);
    let r = records(&h);
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!((r[0].rec.stored.clone().map(|s| s.0), r[0].rec.claim.clone()), (Some(sha(M1)), None));
    assert_eq!((r[0].repository.as_str(), r[0].tag.as_str()), ("app", "v1"));
}

#[test]
fn a_failed_write_releases_the_claim_and_is_relayed() {
    let h = FakeHost::new();
    let w = worker(&h, POLICY);
    let mut f = Filter::new(Some(w.clone()));
    put_headers(&mut f, &h, "v1", M1);
    respond(&mut f, &h, head_answer(None));
    send_body(&mut f, &h, &[M1]);
    let body = br#"{"errors":[{"code":"MANIFEST_BLOB_UNKNOWN","message":"blob unknown"}]}"#;
    respond(&mut f, &h, answer(400, &[("content-type", "application/json"), ("content-length", "70")], body));
    let r = h.reply().unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(r.body, body.to_vec());
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("content-length"), None, "framing is Envoy's");
    // The claim is gone: another manifest may now be the first push.
    assert_eq!(push(&h, &w, "v1", M2, None).status, 201);
}

#[test]
fn a_reset_write_keeps_the_claim_until_it_expires() {
    let h = FakeHost::new();
    let w = worker(&h, POLICY);
    let mut f = Filter::new(Some(w.clone()));
    put_headers(&mut f, &h, "v1", M1);
    respond(&mut f, &h, head_answer(None));
    send_body(&mut f, &h, &[M1]);
    respond(&mut f, &h, Reply { status: 0, headers: Vec::new(), body: Vec::new() });
    assert_eq!(h.reply().unwrap().status, 503);
    // The registry may hold M1 now: M2 must not get in on an "absent" answer.
    let r = push(&h, &w, "v1", M2, None);
    assert_eq!(r.status, 409);
    assert!(r.json()["errors"][0]["detail"]["in_flight"].is_string());
}

#[test]
fn an_upstream_error_let_through_by_policy_is_still_fenced_by_the_claims() {
    // on_upstream_error = allow gives up the registry's word, not the claims': a push that
    // learned nothing must not override what a push through this Envoy just committed.
    let h = FakeHost::new();
    let w = worker(
        &h,
        r#"{"upstream": {"cluster": "registry"}, "global": {"immutable_tags": true}, "on_upstream_error": "allow", "cache": {"ttl_seconds": 0}}"#,
    );
    assert_eq!(push(&h, &w, "v1", M1, None).status, 201);
    h.advance(1000);
    let mut f = Filter::new(Some(w.clone()));
    put_headers(&mut f, &h, "v1", M2);
    // The registry's own 500 (Envoy stamps its answers; see `upstream::from_registry`).
    respond(&mut f, &h, answer(500, &[("x-envoy-upstream-service-time", "3")], b""));
    send_body(&mut f, &h, &[M2]);
    let r = h.reply().unwrap();
    assert_eq!(r.status, 409);
    assert_eq!(r.json()["errors"][0]["detail"]["current_digest"], sha(M1));
    assert_eq!(h.calls_with("PUT").len(), 1);
}

#[test]
fn a_stored_push_the_registry_names_no_digest_for_commits_the_claimed_one() {
    let h = FakeHost::new();
    let w = worker(&h, POLICY);
    let mut f = Filter::new(Some(w.clone()));
    put_headers(&mut f, &h, "v1", M1);
    respond(&mut f, &h, head_answer(None));
    send_body(&mut f, &h, &[M1]);
    respond(&mut f, &h, answer(201, &[("location", "/v2/app/manifests/v1")], b""));
    assert_eq!(h.reply().unwrap().status, 201);
    let r = records(&h);
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(
        (r[0].tag.as_str(), r[0].rec.stored.clone().map(|s| s.0), r[0].rec.claim.clone()),
        ("v1", Some(sha(M1)), None)
    );
}

#[test]
fn a_stored_multi_tag_push_commits_every_tag_it_named() {
    // Issue 21: every tag a stored write named is committed (a registry that ignores `?tag=`
    // only makes that record stricter than needed until it expires).
    let h = FakeHost::new();
    let w = worker(&h, POLICY);
    let mut f = Filter::new(Some(w.clone()));
    let len = M1.len().to_string();
    h.request("PUT", "/v2/app/manifests/v1?tag=v2", &[CT, ("content-length", &len)]);
    on_headers(&mut f, &h, false);
    respond(&mut f, &h, head_answer(None));
    respond(&mut f, &h, head_answer(None));
    send_body(&mut f, &h, &[M1]);
    respond(&mut f, &h, created(M1));
    assert_eq!(h.reply().unwrap().status, 201);
    let r = records(&h);
    assert_eq!(r.len(), 2, "{r:?}");
    assert!(
        r.iter()
            .all(|r| r.rec.claim.is_none() && r.rec.stored.as_ref().map(|s| s.0.clone()) == Some(sha(M1))),
        "{r:?}"
    );
}
