//! Tag claims: one rule for every write the filter performs to a protected tag, over two
//! stores: Envoy shared data (one Envoy, synchronous CAS: `shared_data`) and etcd (every
//! replica, asynchronous calls: `etcd`). The record and the rule are [`crate::store::claims`]'s.
//!
//! **The rule.** A write of digest D to a protected tag holds a claim for D on the tag from
//! before it is sent until the registry's answer is known (stored: the claim becomes the
//! tag's committed change; refused: the hold is released), however it was judged: first push,
//! identical re-push, break-glass override alike. The claim is granted only to a push whose view
//! of the tag (map entry or HEAD answer, "absent" or a digest) is not older than the tag's
//! last committed change of another digest, and never to "absent" while such a change is on record;
//! a claim of another digest in flight refuses it, the same digest shares it (each hold has
//! its take time; a push's commit or release removes its own, never another's or a committed
//! change; a hold counts for two TTLs, see [`crate::store::claims::held`]). A view older than half the
//! TTL is refused (503), and so is a claim answer that took half the TTL or more; a write's
//! claims are at most half a TTL old when it is sent and it lands within the write timeout (at
//! most half a TTL), so a claim's record outlives every view taken while its write was in
//! flight, even if its writer dies before committing. Records live one
//! TTL past their last write, on their own (shared data: their expiry; etcd: a lease of their
//! own, never their replica's), so no view that predates a committed change outlives its record.
//!
//! **Order, not clocks.** "Newer" and "older" are counted by the store's own counter (etcd:
//! revisions; shared data: a slot's write counter; see [`crate::store::claims::View`]), so skew between
//! replicas and clock steps never make a view that predates a committed change pass as newer.
//! What a clock step can still do: the age limits (and shared data's record expiry) use the
//! local clock, so a step back of half the TTL or more while a push is in flight can let its
//! view outlive the record of a change made after it, and a step forward of half a TTL or more
//! can end a hold (shared data) while its write is in flight. Named as a limit in the docs.
//!
//! **Deletes by digest** hold a claim on their digest's fence (`fence_tag`) from before their
//! check until the registry answers; a push of the digest to a protected tag is not granted
//! its claim while a fence is held, nor a fence while such a claim is.
//!
//! The push flow asks `claim` and, when the answer is `Pending`, feeds the call's answer to
//! `on_response`; it never looks at which store answers.
pub mod etcd;
pub mod shared_data;

use super::host::Host;
use super::worker::Worker;
pub use crate::store::claims::View;

pub use crate::store::claims::NO_HOLD;

/// The outcome of a claim, for the push flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claimed {
    /// Let the push through, holding the claim: commit or release it when the registry
    /// answers. `revision`: the store's version of the record (etcd; 0 in shared data);
    /// `at_ms`: the hold's take time, which its commit or release names.
    Proceed {
        revision: u64,
        at_ms: u64,
    },
    Conflict {
        digest: String,
        committed: bool,
    },
    /// Refuse with 503, for this reason (it names the claim store).
    Unavailable(String),
    /// Asked the store; the answer arrives as the call `token`'s response.
    Pending(etcd::InFlight),
    /// Granted, then given back: a push found a delete of its digest in flight, or a delete's
    /// fence found a push of its digest in flight (see `fence_tag`). Refuse with 409.
    Fenced,
}

/// The tag of a digest delete's fence on `repository@digest`: a claim like any other (held
/// from before the delete's check until the registry answers it, counted, expiring), under a
/// name no tag can have. Reader/writer: a push of the digest to a protected tag reads the fence
/// in the step that takes its claim; the fence, once written, reads every claim of the
/// repository. Whichever is written second sees the other, so a push is never stored between
/// a delete's check and its landing (it would be deleted with it, no break-glass asked).
/// (`@<algorithm>@<hex>`: a claim key's tag holds no `:`.)
pub fn fence_tag(digest: &str) -> String {
    let (algorithm, hex) = digest.split_once(':').unwrap_or((digest, ""));
    format!("@{algorithm}@{hex}")
}

/// The order of a view of `repository:tag` taken now (read before its HEAD is sent): the
/// store's counter, never a clock (see `crate::store::claims::View`). `Err`: it cannot be read; the
/// push is refused.
pub fn view_order(host: &dyn Host, worker: &Worker, repository: &str, tag: &str) -> Result<u64, String> {
    match &worker.config.claims.etcd {
        None => shared_data::order(host, &worker.config.claims, repository, tag),
        Some(_) => Ok(etcd::seen(worker)),
    }
}

/// Claims `repository:tag` for `digest`, for a push with this view of the tag.
pub fn claim(
    host: &dyn Host,
    worker: &Worker,
    repository: &str,
    tag: &str,
    digest: &str,
    view: View,
) -> Claimed {
    let settings = &worker.config.claims;
    match &settings.etcd {
        None => match shared_data::claim(host, settings, repository, tag, digest, view) {
            Claimed::Proceed { revision, at_ms } => {
                match shared_data::fenced(host, settings, repository, tag, digest) {
                    Ok(false) => Claimed::Proceed { revision, at_ms },
                    fenced => {
                        shared_data::release(host, settings, repository, tag, digest, at_ms);
                        fenced.map_or_else(Claimed::Unavailable, |_| Claimed::Fenced)
                    }
                }
            }
            other => other,
        },
        Some(_) => etcd::claim(host, worker, repository, tag, digest, view),
    }
}

/// A call answered while a claim was `Pending`.
pub fn on_response(host: &dyn Host, worker: &Worker, claim: etcd::InFlight, body_size: usize) -> Claimed {
    etcd::on_response(host, worker, claim, body_size)
}

/// The registry stored `digest` under `tag`: the tag's committed change. Never delays the
/// client's answer (etcd: handed to the root context, see `etcd`). `held`: the take time of
/// the write's hold (`Proceed`'s `at_ms`; [`NO_HOLD`] for a write that held none).
pub fn commit(host: &dyn Host, worker: &Worker, repository: &str, tag: &str, digest: &str, held: u64) {
    match &worker.config.claims.etcd {
        None => shared_data::commit(host, &worker.config.claims, repository, tag, digest, held),
        Some(_) => etcd::commit(host, worker, repository, tag, digest, held),
    }
}

/// Gives back one hold on a claim of `digest` (the write failed or was never sent).
pub fn release(host: &dyn Host, worker: &Worker, repository: &str, tag: &str, digest: &str, held: u64) {
    match &worker.config.claims.etcd {
        None => shared_data::release(host, &worker.config.claims, repository, tag, digest, held),
        Some(_) => etcd::release(worker, repository, tag, digest, held),
    }
}

/// A delete of the tag the filter granted (break-glass) went through: its committed change no
/// longer refuses "absent" (the one way a protected tag becomes new again). `before`: the
/// tag's [`view_order`] read before the delete was sent (see `crate::store::claims::deleted`).
pub fn forget(
    host: &dyn Host,
    worker: &Worker,
    repository: &str,
    tag: &str,
    before: u64,
    digest: Option<&str>,
) {
    match &worker.config.claims.etcd {
        None => shared_data::forget(host, &worker.config.claims, repository, tag, before, digest),
        Some(_) => etcd::forget(host, worker, repository, tag, before, digest),
    }
}
