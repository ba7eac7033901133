//! Tag claims, one interface over two stores: Envoy shared data (one Envoy, synchronous CAS:
//! `shared_data`) and etcd (every replica, asynchronous calls: `etcd`). The push flow asks
//! `claim` and, when the answer is `Pending`, feeds the call's answer to `on_response`; it
//! never looks at which store answers.
pub mod etcd;
pub mod shared_data;

use super::host::Host;
use super::worker::Worker;

/// The outcome of a claim, for the push flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claimed {
    /// Let the push through; `held`: release or commit it when the registry answers;
    /// `revision`: the store's version of our record (etcd; 0 in shared data).
    Proceed { held: bool, revision: u64 },
    Conflict { digest: String, committed: bool },
    /// Refuse with 503, for this reason (it names the claim store).
    Unavailable(String),
    /// Asked the store; the answer arrives as the call `token`'s response.
    Pending(etcd::InFlight),
}

/// Whether a tag judged allowed must be claimed. `changes`: the push changes what the tag
/// holds (the registry does not hold it, or break-glass lifted an overwrite's refusal), or the
/// verdict rests on a map entry while tags can change through the filter
/// (`Config::tags_can_change`: the claim meets the record of that change).
/// In etcd a push of the digest the registry itself just said it holds needs no claim: a
/// concurrent push of another digest either sees that digest too (409 from the registry's
/// word), or saw the tag absent before our first push committed, and then meets its committed
/// record. Shared data claims every allowed tag (its behaviour since the start; no round trip).
pub fn needed(worker: &Worker, changes: bool) -> bool {
    changes || worker.config.claims.etcd.is_none()
}

/// Claims `repository:tag` for `digest`, for a push whose view of the tag dates from `since_ms`.
pub fn claim(host: &dyn Host, worker: &Worker, repository: &str, tag: &str, digest: &str, since_ms: u64) -> Claimed {
    match &worker.config.claims.etcd {
        None => shared_data::claim(host, &worker.config.claims, repository, tag, digest, since_ms),
        Some(_) => etcd::claim(host, worker, repository, tag, digest, since_ms),
    }
}

/// A call answered while a claim was `Pending`.
pub fn on_response(host: &dyn Host, worker: &Worker, claim: etcd::InFlight, body_size: usize) -> Claimed {
    etcd::on_response(host, worker, claim, body_size)
}

/// The registry stored `digest` under `tag`: keep the record one more TTL. Never delays the
/// client's answer (etcd: handed to the root context, see `etcd`).
pub fn commit(host: &dyn Host, worker: &Worker, repository: &str, tag: &str, digest: &str, revision: u64) {
    match &worker.config.claims.etcd {
        None => shared_data::commit(host, &worker.config.claims, repository, tag, digest),
        Some(_) => etcd::commit(host, worker, repository, tag, digest, revision),
    }
}

/// Gives back a claim this push held (the push failed or was refused).
pub fn release(host: &dyn Host, worker: &Worker, repository: &str, tag: &str, digest: &str, revision: u64) {
    match &worker.config.claims.etcd {
        None => shared_data::release(host, &worker.config.claims, repository, tag, digest),
        Some(_) => etcd::release(host, worker, repository, tag, revision),
    }
}
