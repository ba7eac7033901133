//! Host side of a delete by digest: sends the `tags/list` and `HEAD` calls that
//! `crate::deletes::DigestCheck` asks for, answers from the per-worker map where it can, and
//! feeds the registry's answers back. Every decision is the core's; the filter acts on `Next`.
use super::root::Worker;
use super::{headers, log, upstream};
use crate::deletes::{first_page_path, DigestCheck, Refusal, Step};
use crate::digest::Digest;
use crate::oci_error::OciError;
use crate::verdict::{read_head, Current};
use std::collections::HashMap;

/// A `tags/list` page larger than this is refused: 1,000 maximal tags are about 130 KiB.
const MAX_PAGE_BYTES: usize = 4 << 20;

enum Call {
    /// A `tags/list` page, by the path asked for.
    List(String),
    Head(String),
}

pub struct DigestDelete {
    check: DigestCheck,
    calls: HashMap<u32, Call>,
    authority: Option<String>,
    authorization: Option<String>,
}

/// What the filter does with the delete now.
pub enum Next {
    Wait,
    Allow,
    Refuse(OciError, Vec<(&'static str, String)>),
}

impl DigestDelete {
    /// Starts the check with the first `tags/list` page; reads the request's headers.
    pub fn start(worker: &Worker, repository: &str, digest: Digest) -> (DigestDelete, Next) {
        let config = &worker.config;
        let mut d = DigestDelete {
            check: DigestCheck::new(repository, digest, &config.error_code, config.deletes.max_immutable_tags),
            calls: HashMap::new(),
            authority: headers::request(":authority"),
            authorization: headers::request("authorization"),
        };
        let next = d.list(worker, first_page_path(repository, config.deletes.page_size));
        (d, next)
    }

    pub fn repository(&self) -> &str {
        self.check.repository()
    }

    pub fn digest(&self) -> &Digest {
        self.check.digest()
    }

    fn list(&mut self, worker: &Worker, path: String) -> Next {
        let (authority, authorization) = (self.authority.as_deref(), self.authorization.as_deref());
        match upstream::get_tags_list(&worker.config.upstream, authority, authorization, &path) {
            Ok(token) => {
                self.calls.insert(token, Call::List(path));
                Next::Wait
            }
            Err(why) => self.refuse(self.check.unavailable(&why)),
        }
    }

    /// A dispatched call answered (to be called from `on_http_call_response`).
    pub fn on_response(&mut self, worker: &Worker, token: u32, body_size: usize) -> Next {
        let Some(call) = self.calls.remove(&token) else { return Next::Wait };
        let status = headers::call_response(":status");
        match call {
            Call::List(path) => {
                if body_size > MAX_PAGE_BYTES {
                    let why = format!("the registry's tags/list page is larger than {MAX_PAGE_BYTES} bytes");
                    return self.refuse(self.check.unavailable(&why));
                }
                let Some(body) = headers::call_response_body(body_size) else {
                    return self.refuse(self.check.unavailable("cannot read the registry's tags/list answer"));
                };
                let link = headers::call_response("link");
                match self.check.on_page(&worker.config.policy, &path, status.as_deref(), &body, link.as_deref()) {
                    Err(r) => return self.refuse(r),
                    Ok(Some(next)) => {
                        if let Next::Refuse(e, h) = self.list(worker, next) {
                            return Next::Refuse(e, h);
                        }
                    }
                    Ok(None) => {}
                }
            }
            Call::Head(tag) => {
                let digest = headers::call_response("docker-content-digest");
                let answer = read_head(status.as_deref(), digest.as_deref());
                if let Current::Present(d) = &answer {
                    if let Ok(mut c) = worker.cache.try_borrow_mut() {
                        c.put(self.check.repository(), &tag, d.clone(), headers::now_ms());
                    }
                }
                if let Err(r) = self.check.on_head(&tag, answer) {
                    return self.refuse(r);
                }
            }
        }
        self.advance(worker)
    }

    /// Learns what the map knows fresh, decides if it can, else sends the next HEADs.
    fn advance(&mut self, worker: &Worker) -> Next {
        if let Ok(mut cache) = worker.cache.try_borrow_mut() {
            let now = headers::now_ms();
            for tag in self.check.unknown() {
                if let Some(d) = cache.get(self.check.repository(), &tag, now) {
                    self.check.learn(&tag, Some(d));
                }
            }
        }
        match self.check.step() {
            Step::Refuse(r) => return self.refuse(r),
            Step::Allow => return Next::Allow,
            Step::Wait => {}
        }
        let (authority, authorization) = (self.authority.as_deref(), self.authorization.as_deref());
        for tag in self.check.take_heads() {
            match upstream::head_manifest(&worker.config.upstream, authority, authorization, self.check.repository(), &tag) {
                Ok(token) => {
                    self.calls.insert(token, Call::Head(tag));
                }
                Err(why) => return self.refuse(self.check.unavailable(&why)),
            }
        }
        Next::Wait
    }

    fn refuse(&self, r: Refusal) -> Next {
        log::info(&format!(
            "immutable-tags: refused delete of {}@{}: {}",
            self.check.repository(),
            self.check.digest(),
            r.error.message
        ));
        let extra = if r.pass_challenge {
            headers::call_response("www-authenticate").map(|c| ("www-authenticate", c)).into_iter().collect()
        } else {
            Vec::new()
        };
        Next::Refuse(r.error, extra)
    }
}
