//! Pull pinning (`pin_immutable_pulls`): rewrites a manifest read's `:path` to the digest the
//! map knows, and teaches the map from manifest reads of immutable tags.
use super::host::{Host, Level};
use super::worker::Worker;
use crate::pull::{learned_digest, pinned_path};

/// For a GET/HEAD of `repository:tag` with pinning on: `None` when the tag is mutable (nothing
/// to do), else whether the request now reads the digest.
pub fn on_read(host: &dyn Host, worker: &Worker, repository: &str, tag: &str, raw_path: &str) -> Option<bool> {
    if !worker.config.policy.decide(repository, tag).immutable {
        return None;
    }
    let known = worker.cache.try_borrow_mut().ok().and_then(|mut c| c.get(repository, tag, host.now_ms()));
    let Some(digest) = known else { return Some(false) };
    let path = pinned_path(repository, &digest, raw_path);
    match host.set_request_header(":path", &path) {
        Ok(()) => Some(true),
        Err(s) => {
            // Unpinned is the ordinary read: correct, only slower.
            host.log(Level::Warn, &format!("immutable-tags: cannot pin {repository}:{tag} ({s})"));
            Some(false)
        }
    }
}

/// The registry's answer to a read `on_read` looked at.
pub fn on_response(host: &dyn Host, worker: &Worker, repository: &str, tag: &str, pinned: bool) {
    let status = host.response_header(":status");
    let Ok(mut cache) = worker.cache.try_borrow_mut() else { return };
    if pinned {
        // The digest is gone (deleted): stop sending reads to it.
        if status.as_deref().map(str::trim) == Some("404") {
            cache.forget(repository, tag);
        }
        return;
    }
    let content_type = host.response_header("content-type");
    let digest = host.response_header("docker-content-digest");
    if let Some(d) = learned_digest(status.as_deref(), content_type.as_deref(), digest.as_deref()) {
        cache.put(repository, tag, d, host.now_ms());
    }
}
