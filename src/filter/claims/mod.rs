//! Tag claims: one rule for every write the filter performs to a protected tag, over two
//! stores: Envoy shared data (one Envoy, synchronous CAS: `shared_data`) and etcd (every
//! replica, asynchronous calls: `etcd`). The record and the rule are `crate::claims`'s.
//!
//! **The rule.** A write of digest D to a protected tag holds a claim for D on the tag from
//! before it is sent until the registry's answer is known (stored: the claim becomes the
//! tag's committed change; refused: the hold is released), however it was judged: first push,
//! identical re-push, break-glass override alike. The claim is granted only to a push whose view
//! of the tag (map entry or HEAD answer, "absent" or a digest) is not older than the tag's
//! last committed change of another digest, and never to "absent" while such a change is on record;
//! a claim of another digest in flight refuses it, the same digest shares it (each hold has
//! its take time; a push's commit or release removes its own, never another's or a committed
//! change; a hold counts for two TTLs, see `crate::claims::held`). A view older than half the
//! TTL is refused (503), and so is a claim answer that took half the TTL or more; a write's
//! claims are at most half a TTL old when it is sent and it lands within the write timeout (at
//! most half a TTL), so a claim's record outlives every view taken while its write was in
//! flight, even if its writer dies before committing. Records live one
//! TTL past their last write, on their own (shared data: their expiry; etcd: a lease of their
//! own, never their replica's), so no view that predates a committed change outlives its record.
//!
//! **Order, not clocks.** "Newer" and "older" are counted by the store's own counter (etcd:
//! revisions; shared data: a slot's write counter; see `crate::claims::View`), so skew between
//! replicas and clock steps never make a view that predates a committed change pass as newer.
//! What a clock step can still do: the age limits (and shared data's record expiry) use the
//! local clock, so a step back of half the TTL or more while a push is in flight can let its
//! view outlive the record of a change made after it, and a step forward of half a TTL or more
//! can end a hold (shared data) while its write is in flight. Named as a limit in the docs.
//!
//! The push flow asks `claim` and, when the answer is `Pending`, feeds the call's answer to
//! `on_response`; it never looks at which store answers.
pub mod etcd;
pub mod shared_data;

use super::host::Host;
use super::worker::Worker;
pub use crate::claims::View;

/// The take time of no hold (an audit-mode write holds none): its commit removes none.
pub const NO_HOLD: u64 = u64::MAX;

/// The outcome of a claim, for the push flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claimed {
    /// Let the push through, holding the claim: commit or release it when the registry
    /// answers. `revision`: the store's version of the record (etcd; 0 in shared data);
    /// `at_ms`: the hold's take time, which its commit or release names.
    Proceed { revision: u64, at_ms: u64 },
    Conflict { digest: String, committed: bool },
    /// Refuse with 503, for this reason (it names the claim store).
    Unavailable(String),
    /// Asked the store; the answer arrives as the call `token`'s response.
    Pending(etcd::InFlight),
}

/// The order of a view of `repository:tag` taken now (read before its HEAD is sent): the
/// store's counter, never a clock (see `crate::claims::View`). `Err`: it cannot be read; the
/// push is refused.
pub fn view_order(host: &dyn Host, worker: &Worker, repository: &str, tag: &str) -> Result<u64, String> {
    match &worker.config.claims.etcd {
        None => shared_data::order(host, &worker.config.claims, repository, tag),
        Some(_) => Ok(etcd::seen(worker)),
    }
}

/// Claims `repository:tag` for `digest`, for a push with this view of the tag.
pub fn claim(host: &dyn Host, worker: &Worker, repository: &str, tag: &str, digest: &str, view: View) -> Claimed {
    match &worker.config.claims.etcd {
        None => shared_data::claim(host, &worker.config.claims, repository, tag, digest, view),
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
/// longer refuses "absent" (the one way a protected tag becomes new again).
pub fn forget(host: &dyn Host, worker: &Worker, repository: &str, tag: &str) {
    match &worker.config.claims.etcd {
        None => shared_data::forget(host, &worker.config.claims, repository, tag),
        Some(_) => etcd::forget(host, worker, repository, tag),
    }
}
