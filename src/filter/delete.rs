//! Deletes of immutable tags. A delete by tag is judged at its headers. A delete by digest is
//! held at its headers (a DELETE has no body) while this lists the repository's tags
//! (`tags/list` pages) and HEADs its immutable ones, as [`crate::verdict::delete::DigestCheck`] asks;
//! the per-worker map can only make it refuse sooner. Then it is resumed or refused.
use super::claims::{self, Claimed, View};
use super::host::{Host, Level};
use super::upstream::{self, Caller};
use super::worker::Worker;
use crate::oci::digest::Digest;
use crate::oci::error::OciError;
use crate::verdict::delete::{first_page_path, DigestCheck, Refusal, Step};
use crate::verdict::push::{read_get, read_head, Current};
use std::collections::HashMap;

/// A `tags/list` page larger than this is refused: 1,000 maximal tags are about 130 KiB.
pub const MAX_PAGE_BYTES: usize = 4 << 20;

enum Call {
    /// A `tags/list` page, by the path asked for.
    List(String),
    Head(String),
    /// A GET of the tag's manifest, after a HEAD without a digest.
    Get(String),
}

pub struct DigestDelete {
    check: DigestCheck,
    calls: HashMap<u32, Call>,
    caller: Caller,
    /// The fence on `repository@digest` (`claims::fence_tag`): being taken (etcd's answer
    /// awaited), or taken at this time.
    fencing: Option<claims::etcd::InFlight>,
    fenced_ms: Option<u64>,
}

/// What the filter does with the delete now.
pub enum Next {
    Wait,
    Allow,
    /// The refusal, headers to add, and the immutable tags known to hold the digest.
    Refuse(OciError, Vec<(&'static str, String)>, Vec<String>),
}

impl DigestDelete {
    /// Starts the check with the first `tags/list` page; reads the request's headers.
    /// `exhaustive`: break-glass may lift a refusal, so every holder must be known.
    pub fn start(
        host: &dyn Host,
        worker: &Worker,
        repository: &str,
        digest: Digest,
        exhaustive: bool,
    ) -> (DigestDelete, Next) {
        let config = &worker.config;
        let mut d = DigestDelete {
            check: DigestCheck::new(
                repository,
                digest,
                &config.error_code,
                config.deletes.max_immutable_tags,
                exhaustive,
            ),
            calls: HashMap::new(),
            caller: Caller::of(host),
            fencing: None,
            fenced_ms: None,
        };
        // The fence first, then the check: a push of the digest stored after the check would be
        // deleted with the manifest.
        let digest = d.digest().to_string();
        // A fence's tag is never committed (only claimed and given back), so no committed change
        // can find this view stale: its order does not matter.
        let view = View { order: 0, absent: true };
        let next = d.fence(
            host,
            worker,
            claims::claim(host, worker, repository, &claims::fence_tag(&digest), &digest, view),
        );
        (d, next)
    }

    fn fence(&mut self, host: &dyn Host, worker: &Worker, c: Claimed) -> Next {
        match c {
            // The hold's take time: what its release names, and (no later than the answer) when
            // the fence began, for its age.
            Claimed::Proceed { at_ms, .. } => {
                self.fenced_ms = Some(at_ms);
                self.list(
                    host,
                    worker,
                    first_page_path(self.check.repository(), worker.config.deletes.page_size),
                )
            }
            Claimed::Pending(f) => {
                self.fencing = Some(f);
                Next::Wait
            }
            // (A fence holds one digest: no other can conflict with it.)
            Claimed::Fenced | Claimed::Conflict { .. } => {
                let mut r =
                    self.check.unavailable("a push of it to a protected tag is in flight; retry the delete");
                (r.error.status, r.error.code) = (409, "DENIED".into());
                self.refuse(host, r)
            }
            Claimed::Unavailable(why) => self.refuse(host, self.check.unavailable(&why)),
        }
    }

    /// The fence taken: repository, digest, when (`None`: not taken).
    pub fn fence_taken(&self) -> Option<(String, String, u64)> {
        self.fenced_ms.map(|at| (self.check.repository().to_string(), self.check.digest().to_string(), at))
    }

    pub fn repository(&self) -> &str {
        self.check.repository()
    }

    /// The repository as the map knows it (`Worker::map_key`).
    pub fn map_key(&self, worker: &Worker) -> String {
        worker.map_key(self.check.repository(), self.caller.authority.as_deref())
    }

    pub fn digest(&self) -> &Digest {
        self.check.digest()
    }

    pub fn exhaustive(&self) -> bool {
        self.check.exhaustive()
    }

    fn list(&mut self, host: &dyn Host, worker: &Worker, path: String) -> Next {
        match upstream::get_tags_list(host, &worker.config.upstream, &self.caller, &path) {
            Ok(token) => {
                self.calls.insert(token, Call::List(path));
                Next::Wait
            }
            Err(why) => self.refuse(host, self.check.unavailable(&why)),
        }
    }

    /// A dispatched call answered.
    pub fn on_response(&mut self, host: &dyn Host, worker: &Worker, token: u32, body_size: usize) -> Next {
        if let Some(f) = self.fencing.take_if(|f| f.token == token) {
            let c = claims::on_response(host, worker, f, body_size);
            return self.fence(host, worker, c);
        }
        let Some(call) = self.calls.remove(&token) else { return Next::Wait };
        let status = host.call_response_header(":status");
        let is_get = matches!(call, Call::Get(_));
        match call {
            Call::List(path) => {
                if body_size > MAX_PAGE_BYTES {
                    let why = format!("the registry's tags/list page is larger than {MAX_PAGE_BYTES} bytes");
                    return self.refuse(host, self.check.unavailable(&why));
                }
                let Some(body) = host.call_response_body(body_size) else {
                    return self
                        .refuse(host, self.check.unavailable("cannot read the registry's tags/list answer"));
                };
                // Every `Link` value: the single read returns only the first.
                let headers = host.call_response_headers();
                let links: Vec<&str> = headers
                    .iter()
                    .filter(|(k, _)| k.eq_ignore_ascii_case("link"))
                    .map(|(_, v)| v.as_str())
                    .collect();
                if host.call_response_header("link").is_some_and(|l| !links.contains(&l.as_str())) {
                    return self
                        .refuse(host, self.check.unavailable("cannot read the registry's Link headers"));
                }
                match self.check.on_page(&worker.config.policy, &path, status.as_deref(), &body, &links) {
                    Err(r) => return self.refuse(host, r),
                    Ok(Some(next)) => {
                        if let refused @ Next::Refuse(..) = self.list(host, worker, next) {
                            return refused;
                        }
                    }
                    Ok(None) => {}
                }
            }
            Call::Head(tag) | Call::Get(tag) => {
                let answer = if is_get {
                    let max = worker.config.max_manifest_bytes;
                    let body = if body_size > max { None } else { host.call_response_body(body_size) };
                    read_get(status.as_deref(), body.as_deref(), body_size, max)
                } else {
                    read_head(
                        status.as_deref(),
                        host.call_response_header("docker-content-digest").as_deref(),
                    )
                };
                if answer == Current::NoDigest {
                    match upstream::get_manifest(
                        host,
                        &worker.config.upstream,
                        &self.caller,
                        self.check.repository(),
                        &tag,
                    ) {
                        Ok(token) => {
                            self.calls.insert(token, Call::Get(tag));
                            return Next::Wait;
                        }
                        Err(why) => return self.refuse(host, self.check.unavailable(&why)),
                    }
                }
                if let Current::Present(d) = &answer {
                    if let Ok(mut c) = worker.cache.try_borrow_mut() {
                        c.put(&self.map_key(worker), &tag, d.clone(), host.now_ms());
                    }
                }
                if let Err(r) = self.check.on_head(&tag, answer) {
                    return self.refuse(host, r);
                }
            }
        }
        self.advance(host, worker)
    }

    /// Hints what the map knows fresh (it can only refuse sooner), decides if it can, else
    /// sends the next HEADs.
    pub fn advance(&mut self, host: &dyn Host, worker: &Worker) -> Next {
        let key = self.map_key(worker);
        if let Ok(mut cache) = worker.cache.try_borrow_mut() {
            let now = host.now_ms();
            for tag in self.check.unknown() {
                if let Some(d) = cache.get(&key, &tag, now) {
                    self.check.hint(&tag, &d);
                }
            }
        }
        match self.check.step() {
            Step::Refuse(r) => return self.refuse(host, r),
            Step::Allow => return Next::Allow,
            Step::Wait => {}
        }
        for tag in self.check.take_heads() {
            match upstream::head_manifest(
                host,
                &worker.config.upstream,
                &self.caller,
                self.check.repository(),
                &tag,
            ) {
                Ok(token) => {
                    self.calls.insert(token, Call::Head(tag));
                }
                Err(why) => return self.refuse(host, self.check.unavailable(&why)),
            }
        }
        Next::Wait
    }

    fn refuse(&self, host: &dyn Host, r: Refusal) -> Next {
        host.log(
            Level::Info,
            &format!(
                "immutable-tags: refused delete of {}@{}: {}",
                self.check.repository(),
                self.check.digest(),
                r.error.message
            ),
        );
        let extra = if r.pass_challenge {
            host.call_response_header("www-authenticate")
                .map(|c| ("www-authenticate", c))
                .into_iter()
                .collect()
        } else {
            Vec::new()
        };
        Next::Refuse(r.error, extra, r.held)
    }
}
