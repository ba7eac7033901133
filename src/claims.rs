//! Tag claims: the process-wide record that makes two concurrent pushes of different manifests
//! to one new immutable tag impossible within one Envoy.
//!
//! Each HTTP context only sees its own HEAD answer, so two pushes can both learn "absent" and
//! both be let through. Before a push is let through it claims `repository:tag` with its digest
//! in Envoy's shared data (process-wide, compare-and-swap); a push of a different digest finds
//! the claim and is refused. When the registry accepts the push the claim becomes a
//! "committed" record that lives one more TTL: it fences a push whose HEAD ran before the
//! commit and so still believes the tag absent. Every record expires on its own, so a stream
//! that dies never leaves a tag stuck.
//!
//! Shared data has no delete, so memory is bounded by design: `repository:tag` hashes into a
//! fixed number of slots, each holding at most [`MAX_RECORDS`] records, expired ones pruned on
//! every write. This module is pure: it turns a slot's bytes and `now` into a decision and the
//! bytes to write back; `host::claims` does the reads and CAS writes.

/// Live records one slot may hold. A claim that finds its slot full evicts the oldest committed
/// record, or is refused (503) if all are claims in flight.
pub const MAX_RECORDS: usize = 16;

/// Every slot starts with this line, so an existing slot is never empty (an empty value and a
/// missing key are hard to tell apart through the host ABI) and a future format never mixes.
const HEADER: &str = "claims/1\n";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A push of this digest is on its way to the registry.
    Claimed,
    /// The registry accepted this digest; kept until expiry to fence stale "absent" answers.
    Committed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub kind: Kind,
    pub expires_ms: u64,
    /// Concurrent pushes of the same digest holding the claim (0 once committed).
    pub holders: u32,
    pub digest: String,
    pub repository: String,
    pub tag: String,
}

impl Record {
    fn is(&self, repository: &str, tag: &str) -> bool {
        self.repository == repository && self.tag == tag
    }
}

/// The records of one slot, decoded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Slot {
    pub records: Vec<Record>,
}

/// Bytes of a fresh, empty slot.
pub fn empty_slot() -> Vec<u8> {
    HEADER.as_bytes().to_vec()
}

impl Slot {
    /// Decodes a slot. Lines that do not parse are dropped: only this module writes slots,
    /// and a record it cannot read protects nothing.
    pub fn decode(bytes: &[u8]) -> Slot {
        let text = String::from_utf8_lossy(bytes);
        let records = text.lines().filter_map(parse_record).collect();
        Slot { records }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut s = String::from(HEADER);
        for r in &self.records {
            let kind = match r.kind {
                Kind::Claimed => 'c',
                Kind::Committed => 'd',
            };
            s.push_str(&format!("{kind} {} {} {} {} {}\n", r.expires_ms, r.holders, r.digest, r.repository, r.tag));
        }
        s.into_bytes()
    }

    fn prune(&mut self, now_ms: u64) {
        self.records.retain(|r| r.expires_ms > now_ms);
    }

    fn find(&mut self, repository: &str, tag: &str) -> Option<&mut Record> {
        self.records.iter_mut().find(|r| r.is(repository, tag))
    }

    /// Makes room for one more record: when full, the committed record closest to expiry
    /// goes (it only fences pushes whose HEAD ran before its commit, and the oldest commit is
    /// the least likely to still have one in flight). Claims in flight are never evicted:
    /// `false` if the slot is full of them.
    fn make_room(&mut self) -> bool {
        if self.records.len() < MAX_RECORDS {
            return true;
        }
        let oldest = self
            .records
            .iter()
            .enumerate()
            .filter(|(_, r)| r.kind == Kind::Committed)
            .min_by_key(|(_, r)| r.expires_ms)
            .map(|(i, _)| i);
        match oldest {
            Some(i) => {
                self.records.remove(i);
                self.records.len() < MAX_RECORDS
            }
            None => false,
        }
    }
}

fn parse_record(line: &str) -> Option<Record> {
    let mut f = line.split(' ');
    let kind = match f.next()? {
        "c" => Kind::Claimed,
        "d" => Kind::Committed,
        _ => return None,
    };
    let expires_ms = f.next()?.parse().ok()?;
    let holders = f.next()?.parse().ok()?;
    let digest = f.next()?.to_string();
    let repository = f.next()?.to_string();
    let tag = f.next()?.to_string();
    if f.next().is_some() || digest.is_empty() || repository.is_empty() || tag.is_empty() {
        return None;
    }
    Some(Record { kind, expires_ms, holders, digest, repository, tag })
}

/// FNV-1a: stable across VMs and builds (every worker must pick the same slot), no dependency.
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in *p {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// The slot `repository:tag` lives in, out of `slots` (at least 1).
pub fn slot_index(repository: &str, tag: &str, slots: u32) -> u32 {
    let h = fnv1a(&[repository.as_bytes(), b":", tag.as_bytes()]);
    u32::try_from(h % u64::from(slots.max(1))).unwrap_or(0)
}

/// The shared-data key of a slot. The slot count is part of it, so a reconfiguration with a
/// different count never reads records hashed for another.
pub fn slot_key(slots: u32, index: u32) -> String {
    format!("immutable-tags/claims/1/{slots}/{index}")
}

/// The answer to a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// Write these bytes (compare-and-swap), then let the push through holding the claim.
    Write(Vec<u8>),
    /// The registry already accepted this very digest: let the push through, nothing to hold.
    Proceed,
    /// Another digest holds the tag: refuse with 409. `committed`: it is already stored.
    Conflict { digest: String, committed: bool },
    /// The slot holds [`MAX_RECORDS`] claims in flight: refuse with 503 rather than grow.
    Full,
}

/// Claims `repository:tag` for `digest` until `now_ms + ttl_ms`.
pub fn claim(slot: &[u8], repository: &str, tag: &str, digest: &str, now_ms: u64, ttl_ms: u64) -> Claim {
    claim_known_since(slot, repository, tag, digest, now_ms, ttl_ms, 0)
}

/// `claim`, for a push whose view of the tag (a HEAD answer, or the map entry it came from)
/// dates from `known_since_ms`. A committed record only fences views older than its commit: a
/// view taken after it already saw the registry as it was after that push (if the tag is gone
/// since, it was deleted, and a new first push is legitimate).
pub fn claim_known_since(
    slot: &[u8],
    repository: &str,
    tag: &str,
    digest: &str,
    now_ms: u64,
    ttl_ms: u64,
    known_since_ms: u64,
) -> Claim {
    let mut s = Slot::decode(slot);
    s.prune(now_ms);
    let expires_ms = now_ms.saturating_add(ttl_ms);
    if let Some(r) = s.find(repository, tag) {
        let committed_at = r.expires_ms.saturating_sub(ttl_ms);
        if r.digest != digest && r.kind == Kind::Committed && known_since_ms > committed_at {
            r.kind = Kind::Claimed;
            r.holders = 1;
            r.digest = digest.to_string();
            r.expires_ms = expires_ms;
            return Claim::Write(s.encode());
        }
        if r.digest != digest {
            return Claim::Conflict { digest: r.digest.clone(), committed: r.kind == Kind::Committed };
        }
        match r.kind {
            Kind::Committed => return Claim::Proceed,
            Kind::Claimed => {
                r.holders = r.holders.saturating_add(1);
                r.expires_ms = r.expires_ms.max(expires_ms);
            }
        }
        return Claim::Write(s.encode());
    }
    if !s.make_room() {
        return Claim::Full;
    }
    s.records.push(Record {
        kind: Kind::Claimed,
        expires_ms,
        holders: 1,
        digest: digest.to_string(),
        repository: repository.to_string(),
        tag: tag.to_string(),
    });
    Claim::Write(s.encode())
}

/// The registry stored `digest` under the tag: keep a committed record for one more TTL.
/// `None`: nothing to write (the claim had expired and the slot is full of claims in flight).
pub fn commit(slot: &[u8], repository: &str, tag: &str, digest: &str, now_ms: u64, ttl_ms: u64) -> Option<Vec<u8>> {
    let mut s = Slot::decode(slot);
    s.prune(now_ms);
    let expires_ms = now_ms.saturating_add(ttl_ms);
    // Whatever the record said, the registry now holds `digest`: that is what must be fenced.
    if let Some(r) = s.find(repository, tag) {
        r.kind = Kind::Committed;
        r.holders = 0;
        r.digest = digest.to_string();
        r.expires_ms = expires_ms;
    } else if s.make_room() {
        s.records.push(Record {
            kind: Kind::Committed,
            expires_ms,
            holders: 0,
            digest: digest.to_string(),
            repository: repository.to_string(),
            tag: tag.to_string(),
        });
    } else {
        return None;
    }
    Some(s.encode())
}

/// The push failed (or its stream died): give up one hold on our claim. Only a claim of our own
/// digest is touched; a committed record, or someone else's claim, stays. `None`: nothing to do.
pub fn release(slot: &[u8], repository: &str, tag: &str, digest: &str, now_ms: u64) -> Option<Vec<u8>> {
    let mut s = Slot::decode(slot);
    s.prune(now_ms);
    let r = s.find(repository, tag)?;
    if r.kind != Kind::Claimed || r.digest != digest {
        return None;
    }
    r.holders = r.holders.saturating_sub(1);
    if r.holders == 0 {
        s.records.retain(|r| !r.is(repository, tag));
    }
    Some(s.encode())
}

/// Whether an "absent" answer learned at `looked_up_ms` may still be trusted at `now_ms`: a
/// push that commits after the lookup leaves a record for `ttl_ms`, so past that a concurrent
/// commit could be invisible, and the push must be refused (the client retries).
pub fn absence_still_fenced(looked_up_ms: u64, now_ms: u64, ttl_ms: u64) -> bool {
    now_ms.saturating_sub(looked_up_ms) < ttl_ms
}

#[cfg(test)]
mod tests {
    use super::*;
    // The same tests run on wasm32 under wasm-bindgen-test (Node.js).
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    const TTL: u64 = 60_000;
    const D: &str = "sha256:dddd";
    const E: &str = "sha256:eeee";

    fn written(c: Claim) -> Vec<u8> {
        match c {
            Claim::Write(b) => b,
            other => panic!("expected a write, got {other:?}"),
        }
    }

    #[test]
    fn first_claim_wins_and_a_different_digest_conflicts() {
        let s = written(claim(&empty_slot(), "app", "v1", D, 0, TTL));
        assert_eq!(claim(&s, "app", "v1", E, 1, TTL), Claim::Conflict { digest: D.into(), committed: false });
        assert!(matches!(claim(&s, "app", "v2", E, 1, TTL), Claim::Write(_)), "other tags are independent");
        assert!(matches!(claim(&s, "other", "v1", E, 1, TTL), Claim::Write(_)));
    }

    #[test]
    fn same_digest_shares_the_claim_and_needs_every_release() {
        let s = written(claim(&empty_slot(), "app", "v1", D, 0, TTL));
        let s = written(claim(&s, "app", "v1", D, 1, TTL));
        assert_eq!(Slot::decode(&s).records[0].holders, 2);
        let s = release(&s, "app", "v1", D, 2).unwrap();
        assert!(matches!(claim(&s, "app", "v1", E, 3, TTL), Claim::Conflict { .. }), "one holder left");
        let s = release(&s, "app", "v1", D, 4).unwrap();
        assert!(Slot::decode(&s).records.is_empty());
        assert!(matches!(claim(&s, "app", "v1", E, 5, TTL), Claim::Write(_)), "released: free again");
    }

    #[test]
    fn commit_fences_stale_absent_answers_until_it_expires() {
        let s = written(claim(&empty_slot(), "app", "v1", D, 0, TTL));
        let s = commit(&s, "app", "v1", D, 10, TTL).unwrap();
        let r = &Slot::decode(&s).records[0];
        assert_eq!((r.kind, r.holders, r.expires_ms), (Kind::Committed, 0, 10 + TTL));
        assert_eq!(claim(&s, "app", "v1", E, 20, TTL), Claim::Conflict { digest: D.into(), committed: true });
        assert_eq!(claim(&s, "app", "v1", D, 20, TTL), Claim::Proceed, "an identical re-push");
        assert_eq!(release(&s, "app", "v1", D, 20), None, "a failed re-push never drops a commit");
        assert!(matches!(claim(&s, "app", "v1", E, 10 + TTL, TTL), Claim::Write(_)), "expired on its own");
    }

    #[test]
    fn claims_expire_so_no_tag_is_stuck() {
        let s = written(claim(&empty_slot(), "app", "v1", D, 0, TTL));
        assert!(matches!(claim(&s, "app", "v1", E, TTL - 1, TTL), Claim::Conflict { .. }));
        let s = written(claim(&s, "app", "v1", E, TTL, TTL));
        let recs = Slot::decode(&s).records;
        assert_eq!(recs.len(), 1, "the dead claim was pruned");
        assert_eq!(recs[0].digest, E);
    }

    #[test]
    fn a_commit_only_fences_views_older_than_itself() {
        let s = written(claim(&empty_slot(), "app", "v1", D, 0, TTL));
        let s = commit(&s, "app", "v1", D, 10, TTL).unwrap();
        let older = claim_known_since(&s, "app", "v1", E, 20, TTL, 5);
        assert_eq!(older, Claim::Conflict { digest: D.into(), committed: true });
        let s = written(claim_known_since(&s, "app", "v1", E, 20, TTL, 11));
        assert_eq!(claim(&s, "app", "v1", D, 21, TTL), Claim::Conflict { digest: E.into(), committed: false }, "now E's claim");
    }

    #[test]
    fn release_only_touches_our_own_claim() {
        let s = written(claim(&empty_slot(), "app", "v1", D, 0, TTL));
        assert_eq!(release(&s, "app", "v1", E, 1), None);
        assert_eq!(release(&s, "app", "v2", D, 1), None);
        assert_eq!(release(&empty_slot(), "app", "v1", D, 1), None);
    }

    #[test]
    fn commit_without_a_live_claim_still_records_and_overrides() {
        let s = commit(&empty_slot(), "app", "v1", D, 0, TTL).unwrap();
        assert_eq!(claim(&s, "app", "v1", E, 1, TTL), Claim::Conflict { digest: D.into(), committed: true });
        // Our claim expired and another digest claimed meanwhile; the registry holds ours now.
        let s = written(claim(&empty_slot(), "app", "v1", E, 0, TTL));
        let s = commit(&s, "app", "v1", D, 1, TTL).unwrap();
        assert_eq!(Slot::decode(&s).records[0].digest, D);
    }

    #[test]
    fn a_full_slot_refuses_new_claims_but_prunes_expired_ones() {
        let mut s = empty_slot();
        for i in 0..MAX_RECORDS {
            s = written(claim(&s, "app", &format!("t{i}"), D, 0, TTL));
        }
        assert_eq!(claim(&s, "app", "new", D, 1, TTL), Claim::Full);
        assert!(matches!(claim(&s, "app", "t3", D, 1, TTL), Claim::Write(_)), "a held tag still shares");
        assert_eq!(commit(&s, "app", "new", D, 1, TTL), None);
        let s = written(claim(&s, "app", "new", D, TTL, TTL));
        assert_eq!(Slot::decode(&s).records.len(), 1);
    }

    #[test]
    fn records_with_a_missing_or_extra_field_are_dropped() {
        let good = "c 100 1 sha256:dddd app v1";
        let bad = [
            "c 100 1  app v1",                // no digest
            "c 100 1 sha256:dddd  v1",        // no repository
            "c 100 1 sha256:dddd app ",       // no tag
            "c 100 1 sha256:dddd app v1 x",   // one field too many
            "x 100 1 sha256:dddd app v1",     // unknown kind
        ];
        assert_eq!(Slot::decode(format!("{HEADER}{good}\n").as_bytes()).records.len(), 1);
        for line in bad {
            assert_eq!(Slot::decode(format!("{HEADER}{line}\n").as_bytes()).records, vec![], "{line:?}");
        }
    }

    #[test]
    fn a_slot_over_the_bound_never_grows() {
        // Shared data outlives a VM reload: a slot may come from another build of the module.
        let records = (0..=MAX_RECORDS as u64)
            .map(|i| Record { kind: Kind::Committed, expires_ms: 100 + i, holders: 0, digest: D.into(), repository: "app".into(), tag: format!("t{i}") })
            .collect();
        let s = Slot { records }.encode();
        match claim(&s, "app", "new", D, 1, TTL) {
            Claim::Write(w) => assert!(Slot::decode(&w).records.len() <= MAX_RECORDS),
            other => assert_eq!(other, Claim::Full),
        }
        if let Some(w) = commit(&s, "app", "new", D, 1, TTL) {
            assert!(Slot::decode(&w).records.len() <= MAX_RECORDS);
        }
    }

    #[test]
    fn a_full_slot_evicts_the_oldest_commit_first() {
        let mut s = empty_slot();
        for i in 0..MAX_RECORDS as u64 {
            let tag = format!("t{i}");
            s = written(claim(&s, "app", &tag, D, i, TTL));
            s = commit(&s, "app", &tag, D, i, TTL).unwrap();
        }
        s = written(claim(&s, "app", "new", E, 100, TTL));
        let recs = Slot::decode(&s).records;
        assert_eq!(recs.len(), MAX_RECORDS);
        assert!(!recs.iter().any(|r| r.tag == "t0"), "the oldest commit went");
        assert!(recs.iter().any(|r| r.tag == "t1"));
        // Claims in flight are never evicted.
        let s = commit(&s, "app", "late", E, 101, TTL).unwrap();
        assert!(Slot::decode(&s).records.iter().any(|r| r.tag == "new" && r.kind == Kind::Claimed));
    }

    #[test]
    fn encoding_round_trips_and_garbage_is_dropped() {
        let s = written(claim(&empty_slot(), "team/app", "v1.0_rc-1", D, 7, TTL));
        let s = commit(&s, "team/app", "v1.0_rc-1", D, 8, TTL).unwrap();
        let s = written(claim(&s, "a", "b", E, 9, TTL));
        let slot = Slot::decode(&s);
        assert_eq!(slot.records.len(), 2);
        assert_eq!(slot.encode(), s);
        let mut junk = s.clone();
        junk.extend_from_slice(b"x 1 2 3 4 5\nc notanumber 1 d r t\nc 1 1 d r\n\xff\xfe\nc 99 1 d r t extra\n");
        assert_eq!(Slot::decode(&junk), slot);
        assert_eq!(Slot::decode(b""), Slot::default());
    }

    #[test]
    fn slots_are_stable_and_in_range() {
        assert_eq!(slot_index("app", "v1", 1024), slot_index("app", "v1", 1024));
        assert_ne!(slot_key(1024, 1), slot_key(2048, 1));
        for i in 0..1000 {
            assert!(slot_index("app", &format!("t{i}"), 7) < 7);
        }
        assert_eq!(slot_index("app", "v1", 0), 0, "0 slots is treated as 1");
        let spread: std::collections::HashSet<u32> = (0..200).map(|i| slot_index("app", &format!("t{i}"), 64)).collect();
        assert!(spread.len() > 40, "tags spread over slots: {}", spread.len());
    }

    #[test]
    fn absence_is_trusted_only_within_the_ttl() {
        assert!(absence_still_fenced(0, TTL - 1, TTL));
        assert!(!absence_still_fenced(0, TTL, TTL));
        assert!(absence_still_fenced(10, 5, TTL), "a clock step back is not an age");
    }
}
