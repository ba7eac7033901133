//! Issue 27's bounds: the shared-data slot hash is keyed with a secret every worker of one
//! Envoy shares (an attacker cannot compute colliding tags), and writes whose client left
//! ("orphans") are bounded per worker.
use crate::filter::claims::shared_data::{self, SLOT_KEY};
use super::fake::Process;
use crate::filter::host::{Host, SharedError};
use super::world::{sha, World, BOB, OCI, SHARED, X, Y};
use crate::filter::Filter;
use crate::claims::{self, decode_slot_key, encode_slot_key, slot_index, Slot, SlotKey};

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
    let colliding: Vec<String> = (0..).map(|i| format!("c{i}")).filter(|t| fnv_slot("app", t, 1024) == target).take(16).collect();
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
    shared.iter().find(|(_, (v, _))| Slot::decode(v).records.iter().any(|r| r.repository == "app" && r.tag == tag)).map(|(k, _)| k.clone())
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
                world.clock.process.shared.borrow_mut().insert(SLOT_KEY.into(), (b"slot-key/1 00".to_vec(), 7));
            }
        }
        let r = world.push(&a, "v1", X, &[BOB]);
        assert_eq!(r.status, 503, "{how}: {:?}", r.json());
        assert!(r.json()["errors"][0]["message"].as_str().unwrap_or("").contains("claim slots' key"), "{how}: {:?}", r.json());
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
        h.request("PUT", &format!("/v2/app/manifests/t{i}"), &[("content-type", OCI), ("content-length", &len), BOB]);
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
    assert_eq!(a.w.orphans.borrow().len(), MAX_ORPHANS);
    assert_eq!(a.root.counter("writes_orphaned") - a.root.counter("orphans_settled"), MAX_ORPHANS as u64);
    let r = world.push(&a, "v1", Y, &[BOB]);
    assert_eq!(r.status, 503, "{:?}", r.json());
    let msg = r.json()["errors"][0]["message"].as_str().unwrap_or("").to_string();
    assert!(msg.contains("writes whose client left"), "{msg}");
    assert_eq!(world.reg.holds("v1"), None);
    assert_eq!(a.w.orphans.borrow().len(), MAX_ORPHANS, "not grown");
    answer_orphan(&world, &a, &mut orphans[0]);
    assert_eq!(a.root.counter("orphans_settled"), 1);
    assert_eq!(world.push(&a, "v1", Y, &[BOB]).status, 201, "room again");
}
