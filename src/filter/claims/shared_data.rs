//! Claims in Envoy shared data (process-wide, compare-and-swap): reads a slot, asks the pure
//! [`crate::store::claims`] what to write, writes it back with CAS, and retries when another worker
//! wrote first.
use super::Claimed;
use crate::config::ClaimSettings;
use crate::filter::host::{Host, Level, SharedError};
use crate::store::claims::{self, Claim, View};

/// Attempts before a contended slot is given up on (the push is then refused with 503).
pub const CAS_ATTEMPTS: usize = 32;

/// Where the slot hash's key lives (`claims::SlotKey`): one per Envoy and VM id, like the slots.
pub const SLOT_KEY: &str = "immutable-tags/claims/slot-key";
/// Written (unconditionally) just before the key is created: see `slot_key`.
const SLOT_KEY_MARK: &str = "immutable-tags/claims/slot-key-mark";

/// The slot hash's key, created once per Envoy and shared by every worker. Read on every use
/// (one shared-data read): a worker never hashes with a key another worker does not use.
///
/// Creating it must never replace a key another worker already hashes with. Envoy writes a
/// missing key whatever the CAS token given, and an existing one only if the token matches; its
/// tokens start at 1 and grow by one per write, process-wide. So the key is created with token
/// 1 right after a write of the mark: the mark takes token 1 if no write took it before, the key
/// never holds 1, and the creation succeeds only where the key is still missing (a worker that
/// lost the race reads the winner's key). Any failure refuses (the caller's 503), never hashes
/// without a key.
pub fn slot_key(host: &dyn Host) -> Result<claims::SlotKey, String> {
    for _ in 0..2 {
        match host.shared_get(SLOT_KEY).map_err(|s| format!("cannot read the claim slots' key ({s})"))? {
            (Some(bytes), cas) if cas != 0 => {
                return claims::decode_slot_key(&bytes)
                    .ok_or_else(|| "the claim slots' key is malformed".to_string())
            }
            _ => {
                let mut key = claims::SlotKey::default();
                host.random(&mut key).map_err(|s| format!("cannot draw the claim slots' key ({s})"))?;
                host.shared_set(SLOT_KEY_MARK, b"", 0)
                    .map_err(|s| format!("cannot create the claim slots' key ({s:?})"))?;
                match host.shared_set(SLOT_KEY, &claims::encode_slot_key(&key), 1) {
                    Ok(()) | Err(SharedError::CasMismatch) => continue, // read back what is there
                    Err(SharedError::Other(s)) => {
                        return Err(format!("cannot create the claim slots' key ({s})"))
                    }
                }
            }
        }
    }
    Err("the claim slots' key could not be created".into())
}

/// Creates every slot that does not exist yet. Done at configuration, before traffic: a CAS
/// write to a missing key is unconditional, so slots must exist before two workers race.
pub fn create_slots(host: &dyn Host, settings: &ClaimSettings) {
    // The key too, before traffic (a failure here is retried on every claim).
    if let Err(why) = slot_key(host) {
        host.log(Level::Warn, &format!("immutable-tags: {why}"));
    }
    for i in 0..settings.slots {
        let key = claims::slot_key(settings.slots, i);
        if let Ok((None, _)) = host.shared_get(&key) {
            if let Err(e) = host.shared_set(&key, &claims::empty_slot(), 0) {
                host.log(Level::Warn, &format!("immutable-tags: cannot create claim slot {key} ({e:?})"));
            }
        }
    }
}

/// Reads the slot, lets `step` decide, writes with CAS. `step` returns the bytes to write (or
/// none) and the result; retried on CAS mismatch.
fn update<T>(
    host: &dyn Host,
    settings: &ClaimSettings,
    repository: &str,
    tag: &str,
    step: impl Fn(&[u8]) -> (Option<Vec<u8>>, T),
) -> Result<T, String> {
    let secret = slot_key(host)?;
    let key = claims::slot_key(settings.slots, claims::slot_index(&secret, repository, tag, settings.slots));
    for _ in 0..CAS_ATTEMPTS {
        let (bytes, cas) = host.shared_get(&key).map_err(|s| format!("cannot read claim slot ({s})"))?;
        let Some(bytes) = bytes.filter(|_| cas != 0) else {
            // Not created at configuration (should not happen): create it, then read again.
            host.shared_set(&key, &claims::empty_slot(), 0)
                .map_err(|s| format!("cannot create claim slot ({s:?})"))?;
            continue;
        };
        let (write, result) = step(&bytes);
        let Some(write) = write else { return Ok(result) };
        match host.shared_set(&key, &write, cas) {
            Ok(()) => return Ok(result),
            Err(SharedError::CasMismatch) => continue,
            Err(SharedError::Other(s)) => return Err(format!("cannot write claim slot ({s})")),
        }
    }
    Err(format!("claim slot still contended after {CAS_ATTEMPTS} attempts"))
}

/// The order of a view of `repository:tag` taken now: its slot's write counter. A slot that
/// cannot be read gives no order (the push is refused); a missing one, 0 (older than any change).
pub fn order(host: &dyn Host, settings: &ClaimSettings, repository: &str, tag: &str) -> Result<u64, String> {
    let secret = slot_key(host)?;
    let key = claims::slot_key(settings.slots, claims::slot_index(&secret, repository, tag, settings.slots));
    let (bytes, _) = host.shared_get(&key).map_err(|s| format!("cannot read claim slot ({s})"))?;
    Ok(bytes.map_or(0, |b| claims::slot_counter(&b)))
}

/// Claims the tag for a push with this view of it (see `claims::take`).
pub fn claim(
    host: &dyn Host,
    settings: &ClaimSettings,
    repository: &str,
    tag: &str,
    digest: &str,
    view: View,
) -> Claimed {
    let now_ms = host.now_ms();
    let step = |slot: &[u8]| claims::claim(slot, repository, tag, digest, view, now_ms, settings.ttl_ms);
    let r = update(host, settings, repository, tag, |slot| match step(slot) {
        Claim::Write(b) => (Some(b), Claimed::Proceed { revision: 0, at_ms: now_ms }),
        Claim::Conflict { digest, committed } => (None, Claimed::Conflict { digest, committed }),
        Claim::Full => (
            None,
            Claimed::Unavailable(
                "too many pushes in flight (claim slot full, or too many pushes of this tag)".into(),
            ),
        ),
    });
    r.unwrap_or_else(Claimed::Unavailable)
}

/// Best effort: a failure only means the record lives until it expires.
pub fn commit(
    host: &dyn Host,
    settings: &ClaimSettings,
    repository: &str,
    tag: &str,
    digest: &str,
    held: u64,
) {
    let now_ms = host.now_ms();
    let r = update(host, settings, repository, tag, |slot| {
        (claims::commit(slot, repository, tag, digest, held, now_ms, settings.ttl_ms), ())
    });
    if let Err(why) = r {
        host.log(Level::Warn, &format!("immutable-tags: cannot commit claim on {repository}:{tag}: {why}"));
    }
}

/// Best effort: a failure only means the claim lives until it expires.
pub fn release(
    host: &dyn Host,
    settings: &ClaimSettings,
    repository: &str,
    tag: &str,
    digest: &str,
    held: u64,
) {
    let now_ms = host.now_ms();
    let r = update(host, settings, repository, tag, |slot| {
        (claims::release(slot, repository, tag, digest, held, now_ms, settings.ttl_ms), ())
    });
    if let Err(why) = r {
        host.log(Level::Warn, &format!("immutable-tags: cannot release claim on {repository}:{tag}: {why}"));
    }
}

/// Best effort: a failure only means the committed record lives until it expires.
pub fn forget(
    host: &dyn Host,
    settings: &ClaimSettings,
    repository: &str,
    tag: &str,
    before: u64,
    digest: Option<&str>,
) {
    let now_ms = host.now_ms();
    let r = update(host, settings, repository, tag, |slot| {
        (claims::forget(slot, repository, tag, before, digest, now_ms, settings.ttl_ms), ())
    });
    if let Err(why) = r {
        host.log(
            Level::Warn,
            &format!("immutable-tags: cannot forget the record of {repository}:{tag}: {why}"),
        );
    }
}

/// Read right after a claim was written (see `super::fence_tag`): for a push's claim, whether
/// a delete of its digest holds the fence; for a fence, whether any push of the digest holds a
/// claim in the repository (every slot is read: digest deletes are rare). A failed read is an
/// error (the caller refuses).
pub fn fenced(
    host: &dyn Host,
    settings: &ClaimSettings,
    repository: &str,
    tag: &str,
    digest: &str,
) -> Result<bool, String> {
    let now = host.now_ms();
    let fence = tag.starts_with('@');
    let (lo, hi) = match fence {
        true => (0, settings.slots),
        false => {
            let i =
                claims::slot_index(&slot_key(host)?, repository, &super::fence_tag(digest), settings.slots);
            (i, i + 1)
        }
    };
    for i in lo..hi {
        let Ok((bytes, _)) = host.shared_get(&claims::slot_key(settings.slots, i)) else {
            return Err("cannot read a claim slot".into());
        };
        let slot = claims::Slot::decode(&bytes.unwrap_or_default());
        // A fence looks for claims, a claim for the fence.
        if slot.records.iter().any(|r| {
            r.repository == repository
                && r.tag.starts_with('@') != fence
                && r.rec.live(now, settings.ttl_ms)
                && claims::holds(&r.rec, digest)
        }) {
            return Ok(true);
        }
    }
    Ok(false)
}
