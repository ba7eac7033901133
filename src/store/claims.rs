//! Tag claims, the pure half: the record of a tag, THE rule (`take`, see [`filter::claims`](crate::filter::claims)),
//! and shared data's slots (the process-wide store within one Envoy).
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
//! bytes to write back; [`filter::claims::shared_data`](crate::filter::claims::shared_data) does the reads and CAS writes.

/// Live records one slot may hold. A claim that finds its slot full of live records is refused
/// (503); no live record is ever evicted (a committed one still fences stale views).
pub const MAX_RECORDS: usize = 16;

/// Holds one record may count: a push beyond is refused (503), so a record stays small.
pub const MAX_HOLDS: usize = 32;

/// Every slot starts with this line, so an existing slot is never empty (an empty value and a
/// missing key are hard to tell apart through the host ABI) and a future format never mixes.
/// It is followed by the slot's write counter (`claims/2 <n>`), bumped by every write.
const HEADER: &str = "claims/2";

/// What the filter knows of one tag, in either store. One record per tag, two facts in it:
/// the last committed change (the digest a write of the filter stored, and its order: the
/// store's counter at that write, see [`View`]), and the
/// claim in flight (the digest being written, and when each push that holds it took it, by
/// its taker's clock: see [`held`]). Both stay until
/// the record expires one TTL after its last write (`at_ms`): a release takes away a hold,
/// never the committed change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rec {
    pub stored: Option<(String, u64)>,
    pub claim: Option<(String, Vec<u64>)>,
    pub at_ms: u64,
}

/// A push's view of the tag: whether it said "absent", and its order: the store's counter
/// read before the HEAD that learned it was sent (etcd: the highest revision the worker had
/// seen; shared data: the write counter of the tag's slot). Views and committed changes are
/// ordered by that counter, never by wall clock: clocks of replicas disagree, and a clock
/// steps. 0: nothing known (older than every committed change).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct View {
    pub order: u64,
    pub absent: bool,
}

impl Rec {
    pub fn live(&self, now_ms: u64, ttl_ms: u64) -> bool {
        self.at_ms.saturating_add(ttl_ms) > now_ms
    }

    /// `<at> <stored digest|-> <committed order> <claimed digest@take,take..|-> <holds>`. A
    /// record of before orders held a committed ms there: larger than any order, so it refuses
    /// every view of another digest until it expires (the safe side). The take times ride on
    /// the digest (never holding '@'), so a filter of before reads a claim of a digest no push
    /// has: it refuses every push of the tag while the record lives (a mixed rollout fails closed).
    pub fn encode(&self) -> String {
        let (sd, sm) = self.stored.as_ref().map_or(("-", 0), |(d, m)| (d.as_str(), *m));
        let (cd, n) = match &self.claim {
            Some((d, h)) => {
                (format!("{d}@{}", h.iter().map(u64::to_string).collect::<Vec<_>>().join(",")), h.len())
            }
            None => ("-".into(), 0),
        };
        format!("{} {sd} {sm} {cd} {n}", self.at_ms)
    }

    /// Also reads a record of the previous formats (`c|d <at> <digest>`; a count of holders,
    /// each taken at the record's time), so an upgrade never reads a live record as nothing.
    pub fn decode(text: &str) -> Option<Rec> {
        let f: Vec<&str> = text.split(' ').collect();
        let digest = |d: &str| (!d.is_empty()).then(|| d.to_string());
        match f.as_slice() {
            [at, sd, sm, cd, n] => {
                let stored = if *sd == "-" { None } else { Some((digest(sd)?, sm.parse().ok()?)) };
                let at = at.parse().ok()?;
                let n = n.parse::<u32>().ok()?.min(MAX_HOLDS as u32) as usize;
                let (cd, holds): (&str, Vec<u64>) = match cd.split_once('@') {
                    Some((d, l)) => (d, l.split(',').map(|t| t.parse().ok()).collect::<Option<_>>()?),
                    None => (cd, vec![at; n]),
                };
                let claim = match cd {
                    "-" => None,
                    _ => Some((digest(cd)?, holds)).filter(|(_, h)| !h.is_empty()),
                };
                Some(Rec { stored, claim, at_ms: at })
            }
            ["c", at, d] => {
                let at = at.parse().ok()?;
                Some(Rec { stored: None, claim: Some((digest(d)?, vec![at])), at_ms: at })
            }
            ["d", at, d] => {
                let at = at.parse().ok()?;
                Some(Rec { stored: Some((digest(d)?, at)), claim: None, at_ms: at })
            }
            _ => None,
        }
    }
}

/// THE rule (see `filter::claims`): may a push of `digest` with this view hold a claim on the
/// tag? `found`: the tag's live record. `Err((digest, committed))`: refused, for that digest.
///
/// - A view older than the last committed change of another digest is stale: it cannot be the
///   registry's word any more (sequence: HEAD, then an override, then the write). Older: its
///   order is below the change's. A view whose order is the change's or above read the counter
///   after the change was written, and the change is written only once the registry stored
///   it, so its HEAD went out after the registry held that digest.
/// - "Absent" is never newer than a committed change of another digest: the tag vanished
///   after the filter stored it (a delete race, or behind the filter's back), so a write of
///   another digest is no first push.
/// - A claim of another digest in flight refuses; the same digest joins it (one more hold,
///   taken `now_ms`: the push remembers it, and its commit or release removes that one).
///
/// `Err(None)`: [`MAX_HOLDS`] pushes hold the claim already (503).
pub fn take(
    found: Option<&Rec>,
    digest: &str,
    view: View,
    now_ms: u64,
    ttl_ms: u64,
) -> Result<Rec, Option<(String, bool)>> {
    let mut r = found.cloned().unwrap_or(Rec { stored: None, claim: None, at_ms: now_ms });
    if let Some((d, at)) = &r.stored {
        if d != digest && (view.order < *at || view.absent) {
            return Err(Some((d.clone(), true)));
        }
    }
    r.claim = match prune(r.claim.take(), now_ms, ttl_ms) {
        Some((d, _)) if d != digest => return Err(Some((d, false))),
        Some((_, h)) if h.len() >= MAX_HOLDS => return Err(None),
        Some((d, mut h)) => {
            h.push(now_ms);
            Some((d, h))
        }
        None => Some((digest.to_string(), vec![now_ms])),
    };
    r.at_ms = now_ms;
    Ok(r)
}

/// Whether a hold taken at `take_ms` (its taker's clock) still counts at `now_ms` (the
/// reader's): for two TTLs. A live hold is at most one TTL old: a push's claims are at most
/// half a TTL old when its write is sent, and the write lands within half a TTL. The second
/// TTL is margin for skew between the replicas' clocks. An older hold is a push that will never
/// settle it (its client left while the claim's call was out; its write's outcome is unknown):
/// it is ignored and pruned, so identical re-pushes that keep the record fresh never carry it
/// forward. Limit: a clock skew or step of over one TTL can end a live hold early.
pub fn held(take_ms: u64, now_ms: u64, ttl_ms: u64) -> bool {
    now_ms.saturating_sub(take_ms) < ttl_ms.saturating_mul(2)
}

fn prune(claim: Option<(String, Vec<u64>)>, now_ms: u64, ttl_ms: u64) -> Option<(String, Vec<u64>)> {
    let (d, mut h) = claim?;
    h.retain(|t| held(*t, now_ms, ttl_ms));
    (!h.is_empty()).then_some((d, h))
}

/// The take time of no hold (an audit-mode write holds none): its commit removes none.
pub const NO_HOLD: u64 = u64::MAX;

/// The registry stored `digest` (a write that held a claim on it): the committed change, at
/// this `order` (the store's counter at the write that records it), now. `take_ms`: the
/// write's hold (see [`take`]). `None`: nothing to write, the hold is gone (pruned, or its
/// record ended): a commit that late (a paused replica's queue) could come after a change of
/// another digest, which its order would pass as older; while the hold stands no other digest
/// can be claimed, so a commit that finds it is the tag's latest change.
pub fn committed(
    found: Option<&Rec>,
    digest: &str,
    order: u64,
    take_ms: u64,
    now_ms: u64,
    ttl_ms: u64,
) -> Option<Rec> {
    let holds_ours = |r: &Rec| matches!(&r.claim, Some((d, h)) if d == digest && h.iter().any(|t| *t == take_ms && held(*t, now_ms, ttl_ms)));
    if take_ms != NO_HOLD && !found.is_some_and(holds_ours) {
        return None;
    }
    let mut r = found.cloned().unwrap_or(Rec { stored: None, claim: None, at_ms: now_ms });
    r.stored = Some((digest.to_string(), order));
    r.claim = prune(drop_hold(r.claim.take(), digest, take_ms), now_ms, ttl_ms);
    r.at_ms = now_ms;
    Some(r)
}

/// The write of `digest` failed: one hold less. `None`: nothing to do; `Some(None)`: the
/// record holds nothing any more (delete it); `Some(Some(r))`: write `r`.
pub fn released(found: &Rec, digest: &str, take_ms: u64, now_ms: u64, ttl_ms: u64) -> Option<Option<Rec>> {
    let mut r = found.clone();
    if !matches!(&r.claim, Some((d, _)) if d == digest) {
        return None;
    }
    r.claim = prune(drop_hold(r.claim.take(), digest, take_ms), now_ms, ttl_ms);
    if r.claim == found.claim {
        return None; // its hold was pruned already: nothing to write (etcd: no lease renewed)
    }
    Some((r.claim.is_some() || r.stored.is_some()).then_some(r))
}

/// The filter let a delete of the tag through (break-glass): the committed change is gone by
/// the filter's own grant, so "absent" is the tag's truth now. Same answers as `released`.
/// `before`: the store's order read before the delete was sent; only a change at or below it
/// is the one deleted (a later one, a first push after the delete, stays: a late forget must
/// not erase it). A change the order cannot place (a lagging etcd order) stays too: fail closed.
pub fn deleted(found: &Rec, before: u64, digest: Option<&str>, now_ms: u64) -> Option<Option<Rec>> {
    found.stored.as_ref().filter(|(d, order)| *order <= before && digest.map_or(true, |x| x == d))?;
    let r = Rec { stored: None, claim: found.claim.clone(), at_ms: now_ms };
    Some(r.claim.is_some().then_some(r))
}

/// Whether the record holds a claim of `digest` (a write of it in flight, or a delete fence).
/// Holds too old to be live count too (the safe side: a fence or a push waits for them).
pub fn holds(found: &Rec, digest: &str) -> bool {
    matches!(&found.claim, Some((d, h)) if d == digest && !h.is_empty())
}

/// Removes the hold taken at `take_ms` (none left with that time: it was pruned).
fn drop_hold(claim: Option<(String, Vec<u64>)>, digest: &str, take_ms: u64) -> Option<(String, Vec<u64>)> {
    match claim {
        Some((d, mut h)) if d == digest => {
            if let Some(i) = h.iter().position(|t| *t == take_ms) {
                h.swap_remove(i);
            }
            (!h.is_empty()).then_some((d, h))
        }
        other => other,
    }
}

/// A record of one slot: the tag it is about, and what is known of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub repository: String,
    pub tag: String,
    pub rec: Rec,
}

impl Record {
    fn is(&self, repository: &str, tag: &str) -> bool {
        self.repository == repository && self.tag == tag
    }
}

/// The records of one slot, decoded, and its write counter: the order of shared data (see
/// [`View`]). Shared data writes a slot only by compare-and-swap, so the counter only grows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Slot {
    pub records: Vec<Record>,
    pub counter: u64,
}

/// Bytes of a fresh, empty slot.
pub fn empty_slot() -> Vec<u8> {
    Slot::default().encode()
}

/// The write counter of a slot (a view's order, read when its HEAD is sent).
pub fn slot_counter(bytes: &[u8]) -> u64 {
    Slot::decode(bytes).counter
}

impl Slot {
    /// Decodes a slot. Lines that do not parse are dropped: only this module writes slots,
    /// and a record it cannot read protects nothing.
    pub fn decode(bytes: &[u8]) -> Slot {
        let text = String::from_utf8_lossy(bytes);
        let counter = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix(HEADER)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0);
        let records = text.lines().filter_map(parse_record).collect();
        Slot { records, counter }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut s = format!("{HEADER} {}\n", self.counter);
        for r in &self.records {
            s.push_str(&format!("{} {} {}\n", r.repository, r.tag, r.rec.encode()));
        }
        s.into_bytes()
    }

    fn prune(&mut self, now_ms: u64, ttl_ms: u64) {
        self.records.retain(|r| r.rec.live(now_ms, ttl_ms));
    }

    fn find(&self, repository: &str, tag: &str) -> Option<&Rec> {
        self.records.iter().find(|r| r.is(repository, tag)).map(|r| &r.rec)
    }

    /// Writes (or, `None`, removes) the record of `repository:tag`; `false` if the slot is full.
    /// A full slot evicts nothing: after `prune` every record is live, so each is either held
    /// or a committed change that may still fence a stale view ("absent", or a map learned
    /// before an override); evicting it would let that view pass again. Full is a 503.
    fn set(&mut self, repository: &str, tag: &str, rec: Option<Rec>) -> bool {
        self.records.retain(|r| !r.is(repository, tag));
        let Some(rec) = rec else { return true };
        if self.records.len() >= MAX_RECORDS {
            return false;
        }
        self.records.push(Record { repository: repository.to_string(), tag: tag.to_string(), rec });
        true
    }
}

fn parse_record(line: &str) -> Option<Record> {
    let (repository, rest) = line.split_once(' ')?;
    let (tag, rec) = rest.split_once(' ')?;
    if repository.is_empty() || tag.is_empty() {
        return None;
    }
    Some(Record { repository: repository.to_string(), tag: tag.to_string(), rec: Rec::decode(rec)? })
}

/// The secret key of the slot hash, the same for every worker of one Envoy (kept in shared
/// data, see `filter::claims::shared_data`). Keyed so that nobody outside can compute tags that
/// land in one slot and fill it (a full slot refuses every push hashing there).
pub type SlotKey = [u8; 16];

/// The key's shared-data value: a version prefix, then the 16 bytes (a value of any other
/// shape is refused, never guessed at).
pub fn encode_slot_key(key: &SlotKey) -> Vec<u8> {
    [&b"slot-key/1 "[..], key].concat()
}

pub fn decode_slot_key(bytes: &[u8]) -> Option<SlotKey> {
    bytes.strip_prefix(b"slot-key/1 ")?.try_into().ok()
}

/// The slot `repository:tag` lives in, out of `slots` (at least 1): SipHash-2-4 under `key`
/// (std's keyed hash, deprecated only as a public name; its output is fixed by the algorithm,
/// so every VM of the build picks the same slot). No crate needed.
pub fn slot_index(key: &SlotKey, repository: &str, tag: &str, slots: u32) -> u32 {
    use std::hash::Hasher;
    let (k0, k1) = key.split_at(8);
    let half = |b: &[u8]| b.try_into().map_or(0, u64::from_le_bytes);
    #[allow(deprecated)]
    let mut h = std::hash::SipHasher::new_with_keys(half(k0), half(k1));
    // A repository never holds ':' (OCI grammar), so the joined bytes name one tag.
    h.write(repository.as_bytes());
    h.write(b":");
    h.write(tag.as_bytes());
    u32::try_from(h.finish() % u64::from(slots.max(1))).unwrap_or(0)
}

/// The shared-data key of a slot. The slot count is part of it, so a reconfiguration with a
/// different count never reads records hashed for another.
pub fn slot_key(slots: u32, index: u32) -> String {
    format!("immutable-tags/claims/2/{slots}/{index}")
}

/// The answer to a claim in a slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// Write these bytes (compare-and-swap), then let the push through holding the claim.
    Write(Vec<u8>),
    /// Another digest holds the tag: refuse with 409. `committed`: it is already stored.
    Conflict { digest: String, committed: bool },
    /// The slot holds [`MAX_RECORDS`] held records, or the tag [`MAX_HOLDS`] holds: refuse
    /// with 503 rather than grow.
    Full,
}

/// Claims `repository:tag` for `digest`, for a push with this view (see [`take`]).
pub fn claim(
    slot: &[u8],
    repository: &str,
    tag: &str,
    digest: &str,
    view: View,
    now_ms: u64,
    ttl_ms: u64,
) -> Claim {
    let mut s = Slot::decode(slot);
    s.prune(now_ms, ttl_ms);
    s.counter += 1;
    match take(s.find(repository, tag), digest, view, now_ms, ttl_ms) {
        Err(Some((digest, committed))) => Claim::Conflict { digest, committed },
        Err(None) => Claim::Full,
        Ok(r) => match s.set(repository, tag, Some(r)) {
            true => Claim::Write(s.encode()),
            false => Claim::Full,
        },
    }
}

/// The registry stored `digest` under the tag. `None`: nothing to write (the slot is full of
/// held records). `take_ms`: the write's hold.
pub fn commit(
    slot: &[u8],
    repository: &str,
    tag: &str,
    digest: &str,
    take_ms: u64,
    now_ms: u64,
    ttl_ms: u64,
) -> Option<Vec<u8>> {
    let mut s = Slot::decode(slot);
    s.prune(now_ms, ttl_ms);
    s.counter += 1;
    let r = committed(s.find(repository, tag), digest, s.counter, take_ms, now_ms, ttl_ms)?;
    s.set(repository, tag, Some(r)).then(|| s.encode())
}

/// The write failed: one hold less on our claim. `None`: nothing to do.
pub fn release(
    slot: &[u8],
    repository: &str,
    tag: &str,
    digest: &str,
    take_ms: u64,
    now_ms: u64,
    ttl_ms: u64,
) -> Option<Vec<u8>> {
    let mut s = Slot::decode(slot);
    s.prune(now_ms, ttl_ms);
    let r = released(s.find(repository, tag)?, digest, take_ms, now_ms, ttl_ms)?;
    s.counter += 1;
    s.set(repository, tag, r);
    Some(s.encode())
}

/// A delete of the tag the filter granted (see [`deleted`]). `None`: nothing to do.
pub fn forget(
    slot: &[u8],
    repository: &str,
    tag: &str,
    before: u64,
    digest: Option<&str>,
    now_ms: u64,
    ttl_ms: u64,
) -> Option<Vec<u8>> {
    let mut s = Slot::decode(slot);
    s.prune(now_ms, ttl_ms);
    let r = deleted(s.find(repository, tag)?, before, digest, now_ms)?;
    s.counter += 1;
    s.set(repository, tag, r);
    Some(s.encode())
}

/// Whether a view learned at `looked_up_ms` may still be trusted at `now_ms`: a change
/// committed after it leaves a record for `ttl_ms`, so past that a concurrent commit could be
/// invisible, and the push must be refused (the client retries).
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

    fn absent(at: u64) -> View {
        View { order: at, absent: true }
    }
    fn saw(at: u64) -> View {
        View { order: at, absent: false }
    }

    fn written(c: Claim) -> Vec<u8> {
        match c {
            Claim::Write(b) => b,
            other => panic!("expected a write, got {other:?}"),
        }
    }

    #[test]
    fn first_claim_wins_and_a_different_digest_conflicts() {
        let s = written(claim(&empty_slot(), "app", "v1", D, absent(0), 0, TTL));
        assert_eq!(
            claim(&s, "app", "v1", E, absent(0), 1, TTL),
            Claim::Conflict { digest: D.into(), committed: false }
        );
        assert!(
            matches!(claim(&s, "app", "v2", E, absent(0), 1, TTL), Claim::Write(_)),
            "other tags are independent"
        );
    }

    #[test]
    fn same_digest_joins_and_a_release_never_drops_what_another_holder_needs() {
        let s = written(claim(&empty_slot(), "app", "v1", D, absent(0), 0, TTL));
        let s = written(claim(&s, "app", "v1", D, absent(0), 1, TTL));
        assert_eq!(Slot::decode(&s).records[0].rec.claim, Some((D.into(), vec![0, 1])));
        let s = release(&s, "app", "v1", D, 1, 2, TTL).unwrap();
        assert!(
            matches!(claim(&s, "app", "v1", E, absent(0), 3, TTL), Claim::Conflict { .. }),
            "one holder left"
        );
        let s = commit(&s, "app", "v1", D, 0, 4, TTL).unwrap();
        assert_eq!(
            claim(&s, "app", "v1", E, absent(0), 5, TTL),
            Claim::Conflict { digest: D.into(), committed: true }
        );
        let s = release(&s, "app", "v1", D, 0, 6, TTL).unwrap_or(s);
        assert_eq!(
            claim(&s, "app", "v1", E, absent(1), 7, TTL),
            Claim::Conflict { digest: D.into(), committed: true }
        );
    }

    #[test]
    fn a_view_older_than_a_committed_change_is_refused_even_for_the_old_digest() {
        // D stored; a view of D is taken (the slot's counter then); E (an override) is committed
        // after it: that view is stale, whatever the clocks say (the times here run backwards).
        let s = commit(&empty_slot(), "app", "v1", D, NO_HOLD, 50, TTL).unwrap();
        let old = slot_counter(&s);
        let s = written(claim(&s, "app", "v1", E, saw(slot_counter(&s)), 40, TTL));
        let s = commit(&s, "app", "v1", E, 40, 30, TTL).unwrap();
        let change = Slot::decode(&s).records[0].rec.stored.clone().unwrap().1;
        assert_eq!(change, slot_counter(&s), "a commit records the counter it wrote");
        assert_eq!(
            claim(&s, "app", "v1", D, saw(old), 60, TTL),
            Claim::Conflict { digest: E.into(), committed: true }
        );
        // `<`, not `<=`: a view that read the counter the commit wrote was taken after it.
        assert_eq!(
            claim(&s, "app", "v1", D, saw(change - 1), 60, TTL),
            Claim::Conflict { digest: E.into(), committed: true }
        );
        assert!(
            matches!(claim(&s, "app", "v1", D, saw(change), 20, TTL), Claim::Write(_)),
            "a newer view may (break-glass judged it)"
        );
        assert!(
            matches!(claim(&s, "app", "v1", E, saw(old), 60, TTL), Claim::Write(_)),
            "the same digest joins"
        );
    }

    #[test]
    fn every_slot_write_bumps_its_counter_and_old_slots_read_as_zero() {
        assert_eq!(slot_counter(b"claims/2\n"), 0, "a slot of before counters");
        assert_eq!(slot_counter(b"junk"), 0);
        let s = written(claim(&empty_slot(), "app", "v1", D, absent(0), 0, TTL));
        assert_eq!(slot_counter(&s), 1);
        let s = release(&s, "app", "v1", D, 0, 0, TTL).unwrap();
        assert_eq!(commit(&s, "app", "v1", D, 0, 0, TTL), None, "a commit whose hold is gone writes nothing");
        let s = commit(&s, "app", "v1", D, NO_HOLD, 0, TTL).unwrap();
        let s = forget(&s, "app", "v1", u64::MAX, None, 0, TTL).unwrap();
        assert_eq!(slot_counter(&s), 4);
        // A committed ms of the format before orders is larger than any order: it refuses.
        let old = b"claims/2\napp v1 5 sha256:dddd 1700000000000 - 0\n";
        assert_eq!(
            claim(old, "app", "v1", E, saw(9), 6, TTL),
            Claim::Conflict { digest: D.into(), committed: true }
        );
    }

    #[test]
    fn absent_after_a_commit_is_no_first_push_and_a_failed_override_keeps_the_commit() {
        let s = commit(&empty_slot(), "app", "v1", D, NO_HOLD, 10, TTL).unwrap();
        assert_eq!(
            claim(&s, "app", "v1", E, absent(50), 60, TTL),
            Claim::Conflict { digest: D.into(), committed: true }
        );
        assert!(
            matches!(claim(&s, "app", "v1", D, absent(50), 60, TTL), Claim::Write(_)),
            "the same digest again"
        );
        let s = written(claim(&s, "app", "v1", E, saw(20), 30, TTL));
        let s = release(&s, "app", "v1", E, 30, 31, TTL).unwrap();
        assert_eq!(Slot::decode(&s).records[0].rec.stored, Some((D.into(), 1)), "the commit stays");
        assert_eq!(
            claim(&s, "app", "v1", E, absent(5), 40, TTL),
            Claim::Conflict { digest: D.into(), committed: true }
        );
    }

    #[test]
    fn records_expire_so_no_tag_is_stuck() {
        let s = written(claim(&empty_slot(), "app", "v1", D, absent(0), 0, TTL));
        assert!(matches!(claim(&s, "app", "v1", E, absent(0), TTL - 1, TTL), Claim::Conflict { .. }));
        let s = written(claim(&s, "app", "v1", E, absent(TTL), TTL, TTL));
        assert_eq!(Slot::decode(&s).records.len(), 1);
    }

    #[test]
    fn records_round_trip_old_ones_are_read_and_junk_refused() {
        let r = Rec { stored: Some((D.into(), 5)), claim: Some((E.into(), vec![3, 7])), at_ms: 7 };
        assert_eq!(Rec::decode(&r.encode()), Some(r));
        assert_eq!(
            Rec::decode("c 5 sha256:ab"),
            Some(Rec { stored: None, claim: Some(("sha256:ab".into(), vec![5])), at_ms: 5 })
        );
        assert_eq!(
            Rec::decode("d 5 sha256:ab"),
            Some(Rec { stored: Some(("sha256:ab".into(), 5)), claim: None, at_ms: 5 })
        );
        for junk in ["", "x 1 d", "c one d", "c 1", "c 1 ", "1 - 0 - x", "1 d x - 0", "1 - 0 - 0 extra"] {
            assert_eq!(Rec::decode(junk), None, "{junk:?}");
        }
        let s = written(claim(&empty_slot(), "team/app", "v1.0_rc-1", D, absent(7), 7, TTL));
        let mut junk = s.clone();
        junk.extend_from_slice(b"x\na b c\n\xff\xfe\n");
        assert_eq!(Slot::decode(&junk), Slot::decode(&s));
    }

    #[test]
    fn a_full_slot_refuses_and_never_evicts_a_live_record() {
        let mut s = empty_slot();
        for i in 0..MAX_RECORDS {
            s = written(claim(&s, "app", &format!("t{i}"), D, absent(0), 0, TTL));
        }
        assert_eq!(claim(&s, "app", "new", D, absent(0), 1, TTL), Claim::Full);
        let s = commit(&s, "app", "t3", D, 0, 2, TTL).unwrap();
        assert_eq!(
            claim(&s, "app", "new", D, absent(0), 3, TTL),
            Claim::Full,
            "a committed record is not evicted"
        );
        assert!(matches!(
            claim(&s, "app", "t3", E, absent(3), 3, TTL),
            Claim::Conflict { committed: true, .. }
        ));
        assert!(
            matches!(claim(&s, "app", "new", D, absent(0), 2 + TTL, TTL), Claim::Write(_)),
            "room once records expire"
        );
    }

    #[test]
    fn slots_are_stable_and_in_range() {
        let k = [7u8; 16];
        assert_eq!(slot_index(&k, "app", "v1", 1024), slot_index(&k, "app", "v1", 1024));
        assert_ne!(slot_key(1024, 1), slot_key(2048, 1));
        assert_eq!(slot_index(&k, "app", "v1", 0), 0, "0 slots is treated as 1");
    }

    #[test]
    fn the_slot_of_a_tag_depends_on_the_key() {
        // Tags that share a slot under one key are spread under another: a collision computed
        // without the key is no collision.
        let (a, b) = ([1u8; 16], [2u8; 16]);
        let target = slot_index(&a, "app", "v1", 1024);
        let same: Vec<String> = (0..)
            .map(|i| format!("c{i}"))
            .filter(|t| slot_index(&a, "app", t, 1024) == target)
            .take(16)
            .collect();
        let under_b: std::collections::HashSet<u32> =
            same.iter().map(|t| slot_index(&b, "app", t, 1024)).collect();
        assert!(under_b.len() >= 14, "{under_b:?}");
        // Not a fixed function of the text: the key moves single tags too.
        let moved = (0..64)
            .filter(|i| {
                slot_index(&a, "app", &format!("t{i}"), 1024) != slot_index(&b, "app", &format!("t{i}"), 1024)
            })
            .count();
        assert!(moved >= 60, "{moved}");
    }

    #[test]
    fn slot_keys_round_trip_and_junk_is_refused() {
        let k: SlotKey = [0, 1, 2, 0xfe, 0xff, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 0x80];
        assert_eq!(decode_slot_key(&encode_slot_key(&k)), Some(k));
        for junk in [
            &b""[..],
            b"slot-key/1 ",
            b"slot-key/1 00",
            b"slot-key/2 0123456789abcdef",
            b"slot-key/1 0123456789abcdef0",
            b"slot-key/10123456789abcdef",
        ] {
            assert_eq!(decode_slot_key(junk), None, "{junk:?}");
        }
    }

    #[test]
    fn holds_have_their_own_age_and_a_count_is_read_as_holds_at_the_records_time() {
        // An old count: two holds taken at the record's time; a huge one is capped.
        let old = Rec::decode("9 - 0 sha256:ab 2").unwrap();
        assert_eq!(old.claim, Some(("sha256:ab".into(), vec![9, 9])));
        assert_eq!(Rec::decode("9 - 0 sha256:ab 4294967295").unwrap().claim.unwrap().1.len(), MAX_HOLDS);
        for junk in ["9 - 0 sha256:ab@ 1", "9 - 0 sha256:ab@1, 2", "9 - 0 sha256:ab@x 1", "9 - 0 @1 1"] {
            assert_eq!(Rec::decode(junk), None, "{junk:?}");
        }
        // A hold taken at 0 counts until just before two TTLs, whatever the record's time.
        let s = written(claim(&empty_slot(), "app", "v1", D, absent(0), 0, TTL));
        let mut s = s;
        for t in [TTL / 2, TTL, 3 * TTL / 2] {
            s = written(claim(&s, "app", "v1", D, absent(0), t, TTL));
            s = commit(&s, "app", "v1", D, t, t, TTL).unwrap(); // re-pushes keep the record fresh
        }
        let s = written(claim(&s, "app", "v1", D, absent(0), 2 * TTL - 1, TTL));
        assert_eq!(Slot::decode(&s).records[0].rec.claim, Some((D.into(), vec![0, 2 * TTL - 1])));
        let s = commit(&s, "app", "v1", D, 2 * TTL - 1, 2 * TTL - 1, TTL).unwrap();
        assert!(matches!(
            claim(&s, "app", "v1", E, saw(9), 2 * TTL - 1, TTL),
            Claim::Conflict { committed: false, .. }
        ));
        assert!(matches!(claim(&s, "app", "v1", E, saw(9), 2 * TTL, TTL), Claim::Write(_)), "pruned");
        // A release of a pruned hold writes nothing.
        let s = written(claim(&empty_slot(), "app", "v1", D, absent(0), 0, TTL));
        let s = written(claim(&s, "app", "v1", D, absent(0), TTL - 1, TTL));
        assert_eq!(release(&s, "app", "v1", D, 5, TTL, TTL), None);
        // Holds are capped.
        let mut s = empty_slot();
        for i in 0..MAX_HOLDS as u64 {
            s = written(claim(&s, "app", "v1", D, absent(0), i, TTL));
        }
        assert_eq!(claim(&s, "app", "v1", D, absent(0), 40, TTL), Claim::Full);
    }

    #[test]
    fn views_are_trusted_only_within_the_ttl() {
        assert!(absence_still_fenced(0, TTL - 1, TTL));
        assert!(!absence_still_fenced(0, TTL, TTL));
        assert!(absence_still_fenced(10, 5, TTL), "a clock step back is not an age");
    }
}
