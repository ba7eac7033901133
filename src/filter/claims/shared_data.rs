//! Claims in Envoy shared data (process-wide, compare-and-swap): reads a slot, asks the pure
//! `crate::claims` what to write, writes it back with CAS, and retries when another worker
//! wrote first.
use super::Claimed;
use crate::claims::{self, Claim, View};
use crate::config::ClaimSettings;
use crate::filter::host::{Host, Level, SharedError};

/// Attempts before a contended slot is given up on (the push is then refused with 503).
pub const CAS_ATTEMPTS: usize = 32;

/// Creates every slot that does not exist yet. Done at configuration, before traffic: a CAS
/// write to a missing key is unconditional, so slots must exist before two workers race.
pub fn create_slots(host: &dyn Host, settings: &ClaimSettings) {
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
    let key = claims::slot_key(settings.slots, claims::slot_index(repository, tag, settings.slots));
    for _ in 0..CAS_ATTEMPTS {
        let (bytes, cas) = host.shared_get(&key).map_err(|s| format!("cannot read claim slot ({s})"))?;
        let Some(bytes) = bytes.filter(|_| cas != 0) else {
            // Not created at configuration (should not happen): create it, then read again.
            host.shared_set(&key, &claims::empty_slot(), 0).map_err(|s| format!("cannot create claim slot ({s:?})"))?;
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
    let key = claims::slot_key(settings.slots, claims::slot_index(repository, tag, settings.slots));
    let (bytes, _) = host.shared_get(&key).map_err(|s| format!("cannot read claim slot ({s})"))?;
    Ok(bytes.map_or(0, |b| claims::slot_counter(&b)))
}

/// Claims the tag for a push with this view of it (see `claims::take`).
pub fn claim(host: &dyn Host, settings: &ClaimSettings, repository: &str, tag: &str, digest: &str, view: View) -> Claimed {
    let now_ms = host.now_ms();
    let step = |slot: &[u8]| claims::claim(slot, repository, tag, digest, view, now_ms, settings.ttl_ms);
    let r = update(host, settings, repository, tag, |slot| match step(slot) {
        Claim::Write(b) => (Some(b), Claimed::Proceed { revision: 0 }),
        Claim::Conflict { digest, committed } => (None, Claimed::Conflict { digest, committed }),
        Claim::Full => (None, Claimed::Unavailable("too many pushes in flight (claim slot full)".into())),
    });
    r.unwrap_or_else(Claimed::Unavailable)
}

/// Best effort: a failure only means the record lives until it expires.
pub fn commit(host: &dyn Host, settings: &ClaimSettings, repository: &str, tag: &str, digest: &str) {
    let now_ms = host.now_ms();
    let r = update(host, settings, repository, tag, |slot| (claims::commit(slot, repository, tag, digest, now_ms, settings.ttl_ms), ()));
    if let Err(why) = r {
        host.log(Level::Warn, &format!("immutable-tags: cannot commit claim on {repository}:{tag}: {why}"));
    }
}

/// Best effort: a failure only means the claim lives until it expires.
pub fn release(host: &dyn Host, settings: &ClaimSettings, repository: &str, tag: &str, digest: &str) {
    let now_ms = host.now_ms();
    let r = update(host, settings, repository, tag, |slot| (claims::release(slot, repository, tag, digest, now_ms, settings.ttl_ms), ()));
    if let Err(why) = r {
        host.log(Level::Warn, &format!("immutable-tags: cannot release claim on {repository}:{tag}: {why}"));
    }
}

/// Best effort: a failure only means the committed record lives until it expires.
pub fn forget(host: &dyn Host, settings: &ClaimSettings, repository: &str, tag: &str) {
    let now_ms = host.now_ms();
    let r = update(host, settings, repository, tag, |slot| (claims::forget(slot, repository, tag, now_ms, settings.ttl_ms), ()));
    if let Err(why) = r {
        host.log(Level::Warn, &format!("immutable-tags: cannot forget the record of {repository}:{tag}: {why}"));
    }
}
