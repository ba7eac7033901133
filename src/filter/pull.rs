//! Pull pinning (`pin_immutable_pulls`): rewrites a manifest read's `:path` to the digest the
//! map knows, and teaches the map from manifest reads of immutable tags. Both only for a read
//! whose `Accept` names every stored manifest type: the registry answers anything narrower with
//! what it likes (a list's linux/amd64 child, for distribution), which is not the tag's
//! manifest, and which a read by digest would not give.
//!
//! And both only for a read that is surely of the registry the filter's own calls reach: no
//! query string (a mirror may pick its upstream by it: containerd's `?ns=`), and, when
//! `upstream.authority` is set, under that `:authority` (a Host-routed registry may be another
//! one under another name). The map is keyed by what the filter's calls ask, so a read that may
//! reach another upstream must neither teach it (it would pin other clients' reads to the
//! attacker's digest) nor be pinned by it (it would get this upstream's manifest).
use super::host::{Host, Level};
use super::worker::Worker;
use crate::store::tag_cache::Source;
use crate::verdict::pull::{accepts_every_stored_type, learned_digest, pinned_path};

/// For a GET/HEAD of `repository:tag` with pinning on: `None` when there is nothing to do (the
/// tag is mutable, the read is narrower than the tag's own manifest, or may reach another
/// upstream: it goes as it came and teaches nothing), else whether the request now reads the
/// digest. `key`: the repository as the map knows it (`Worker::map_key`).
pub fn on_read(
    host: &dyn Host,
    worker: &Worker,
    repository: &str,
    key: &str,
    tag: &str,
    raw_path: &str,
) -> Option<bool> {
    if raw_path.contains('?') || !worker.config.policy.decide(repository, tag).immutable {
        return None;
    }
    if let Some(calls) = &worker.config.upstream.authority {
        if !host.request_header(":authority").is_some_and(|a| a.eq_ignore_ascii_case(calls)) {
            return None;
        }
    }
    let headers = host.request_headers();
    let accept = headers.iter().filter(|(k, _)| k.eq_ignore_ascii_case("accept")).map(|(_, v)| v.as_str());
    if !accepts_every_stored_type(accept) {
        return None;
    }
    let known = worker.cache.try_borrow_mut().ok().and_then(|mut c| c.get_for_read(key, tag, host.now_ms()));
    let Some(digest) = known else { return Some(false) };
    let path = pinned_path(repository, &digest);
    match host.set_request_header(":path", &path) {
        Ok(()) => Some(true),
        Err(s) => {
            // Unpinned is the ordinary read: correct, only slower.
            host.log(Level::Warn, &format!("immutable-tags: cannot pin {repository}:{tag} ({s})"));
            Some(false)
        }
    }
}

/// The registry's answer to a read `on_read` looked at (`key`: the map's, as for `on_read`).
pub fn on_response(host: &dyn Host, worker: &Worker, key: &str, tag: &str, pinned: bool) {
    let status = host.response_header(":status");
    let Ok(mut cache) = worker.cache.try_borrow_mut() else { return };
    if pinned {
        // The digest is gone (deleted): stop sending reads to it.
        if status.as_deref().map(str::trim) == Some("404") {
            cache.forget(key, tag);
        }
        return;
    }
    let content_type = host.response_header("content-type");
    let digest = host.response_header("docker-content-digest");
    if let Some(d) = learned_digest(status.as_deref(), content_type.as_deref(), digest.as_deref()) {
        // A client's read: pins other reads, never backs a write or delete verdict alone.
        cache.put_from(key, tag, d, host.now_ms(), Source::Read);
    }
}
