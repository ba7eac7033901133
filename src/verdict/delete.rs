//! Deletes: an immutable tag cannot be deleted, and neither can a manifest that an immutable
//! tag points to.
//!
//! A delete by tag is judged by the policy alone. A delete by digest needs the registry: the
//! repository's tags are listed (`GET /v2/<name>/tags/list`, following `Link` pagination), the
//! immutable ones kept, and their digests learned by `HEAD` (the registry's word). The
//! tag-to-digest map may only make it refuse sooner (`hint`), never allow: an entry can be stale
//! (the tag moved behind the filter's back). This module holds that bookkeeping and every
//! decision; the host glue only sends the calls it asks for. Anything it cannot judge (an
//! upstream error, a garbled answer, too much work) refuses.
//!
//! A check that break-glass may lift (`exhaustive`) does not refuse at the first holder: it
//! learns every immutable tag holding the digest from the registry, since a digest delete
//! removes all of them and an override must cover each.

use crate::oci::digest::Digest;
use crate::oci::error::OciError;
use crate::oci::request::is_valid_tag;
use crate::policy::Policy;
use crate::util::json_doc::Json;
use crate::verdict::push::Current;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};

/// Dispatched `HEAD`s in flight at once for one digest delete: enough to hide the round trips,
/// few enough not to flood the registry with one client's delete.
pub const MAX_IN_FLIGHT: usize = 8;

/// Pages of `tags/list` followed at most; a registry that keeps sending `Link`s is refused.
pub const MAX_PAGES: usize = 1000;

/// `DELETE /v2/<name>/manifests/<tag>`: refused (409) when the tag is immutable.
pub fn tag_delete(policy: &Policy, error_code: &str, repository: &str, tag: &str) -> Option<OciError> {
    let d = policy.decide(repository, tag);
    d.immutable.then(|| {
        OciError::new(
            409,
            error_code,
            format!("Tag '{tag}' is immutable and cannot be deleted"),
            json!({"repository": repository, "tag": tag, "reason": d.reason}),
        )
    })
}

/// The first `tags/list` page; `page_size` is sent as `n` (none: the registry's default).
pub fn first_page_path(repository: &str, page_size: Option<u32>) -> String {
    match page_size {
        Some(n) => format!("/v2/{repository}/tags/list?n={n}"),
        None => format!("/v2/{repository}/tags/list"),
    }
}

/// The tags of one `tags/list` page.
pub fn parse_tags_page(body: &[u8]) -> Result<Vec<String>, String> {
    let invalid = |e: String| format!("the registry answered tags/list with invalid JSON ({e})");
    let page = Json::parse(body).map_err(|e| invalid(e.reason))?;
    // Other fields (`name`) are ignored; distribution answers `"tags": null` for a repository
    // whose tags are all gone.
    let tags = match &page {
        Json::Object(entries) => match entries.iter().find(|(k, _)| k == "tags") {
            None | Some((_, Json::Null)) => Vec::new(),
            Some((_, v)) => v.strings("tags").map_err(|e| invalid(format!("{} at {}", e.reason, e.field)))?,
        },
        other => return Err(invalid(other.invalid_type("", "struct TagsPage").reason)),
    };
    if let Some(bad) = tags.iter().find(|t| !is_valid_tag(t)) {
        return Err(format!(
            "the registry listed an invalid tag {:?}",
            bad.chars().take(140).collect::<String>()
        ));
    }
    Ok(tags)
}

/// The path of the next `tags/list` page from the `Link` header values (`<url>; rel="next"`),
/// if any: every value, since a registry may send `rel="first"` and `rel="next"` as separate
/// headers. `url` may be a path (`/v2/...`), an absolute URL (its path is sent to the same
/// upstream), or a query (`?n=..&last=..`, relative to `current`). A next page outside this
/// repository's `tags/list`, or two next pages, are errors: following one would judge the wrong
/// repository or skip tags.
pub fn next_page_path(links: &[&str], repository: &str, current: &str) -> Result<Option<String>, String> {
    let mut next: Option<String> = None;
    for url in links.iter().flat_map(|l| next_urls(l)) {
        let path = resolve(url, repository, current)?;
        match &next {
            Some(n) if *n != path => {
                return Err(format!("the registry's Link headers name two next pages: {n:?} and {path:?}"))
            }
            _ => next = Some(path),
        }
    }
    Ok(next)
}

fn resolve(url: &str, repository: &str, current: &str) -> Result<String, String> {
    let path = if url.starts_with('/') {
        url.to_string()
    } else if let Some(q) = url.strip_prefix('?') {
        let base = current.split_once('?').map_or(current, |(p, _)| p);
        format!("{base}?{q}")
    } else if let Some((_, rest)) = url.split_once("://") {
        match rest.find('/') {
            Some(i) => rest.get(i..).unwrap_or_default().to_string(),
            None => return Err(format!("the registry's Link header has no path: {url:?}")),
        }
    } else {
        return Err(format!("the registry's Link header is not a URL this filter follows: {url:?}"));
    };
    let expected = format!("/v2/{repository}/tags/list");
    let (p, _) = path.split_once('?').unwrap_or((path.as_str(), ""));
    if p != expected || !path.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!("the registry's Link header points outside {expected}: {path:?}"));
    }
    Ok(path)
}

/// The targets of the `rel="next"` links in one `Link` header value (links may be comma-joined).
fn next_urls(header: &str) -> Vec<&str> {
    header
        .split('<')
        .skip(1)
        .filter_map(|seg| {
            let (url, params) = seg.split_once('>')?;
            let params = params.split(',').next().unwrap_or_default();
            let is_next = params.split(';').any(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                k.trim().eq_ignore_ascii_case("rel")
                    && v.trim()
                        .trim_matches('"')
                        .split_ascii_whitespace()
                        .any(|r| r.eq_ignore_ascii_case("next"))
            });
            is_next.then_some(url.trim())
        })
        .collect()
}

/// Why a delete is refused. `pass_challenge`: a 401/403 from the registry, passed back to the
/// client with the registry's `WWW-Authenticate` so token auth still works.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub error: OciError,
    pub pass_challenge: bool,
    /// The immutable tags known to hold the digest (sorted; empty: refused for another reason).
    /// In an exhaustive check, every one of them, each confirmed by the registry.
    pub held: Vec<String>,
}

/// What to do with a digest delete now.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Calls are still out (or need sending): wait.
    Wait,
    /// No immutable tag holds the digest: pass the delete on.
    Allow,
    Refuse(Refusal),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Lookup {
    Unknown,
    InFlight,
    Known(Option<Digest>),
}

#[derive(Debug)]
struct Candidate {
    reason: String,
    lookup: Lookup,
}

/// The check behind one `DELETE /v2/<name>/manifests/<digest>`.
#[derive(Debug)]
pub struct DigestCheck {
    repository: String,
    digest: Digest,
    error_code: String,
    max_immutable_tags: usize,
    /// The repository's immutable tags, by name (deduplicated across pages, ordered).
    immutable: BTreeMap<String, Candidate>,
    pages: usize,
    visited: BTreeSet<String>,
    listed: bool,
    /// Break-glass may lift a refusal: wait for the registry's word on every immutable tag.
    exhaustive: bool,
    /// Tags the map says hold the digest: enough to refuse a non-exhaustive check, never to allow.
    hinted: BTreeSet<String>,
}

impl DigestCheck {
    pub fn new(
        repository: &str,
        digest: Digest,
        error_code: &str,
        max_immutable_tags: usize,
        exhaustive: bool,
    ) -> DigestCheck {
        DigestCheck {
            repository: repository.to_string(),
            digest,
            error_code: error_code.to_string(),
            max_immutable_tags,
            immutable: BTreeMap::new(),
            pages: 0,
            visited: BTreeSet::new(),
            listed: false,
            exhaustive,
            hinted: BTreeSet::new(),
        }
    }

    pub fn repository(&self) -> &str {
        &self.repository
    }

    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    pub fn exhaustive(&self) -> bool {
        self.exhaustive
    }

    /// The detail of every refusal of this delete: the repository, the digest, and `extra`
    /// (one builder rather than a `json!` per refusal: module size).
    #[inline(never)]
    fn detail(&self, extra: Vec<(&str, Value)>) -> Value {
        let mut m = serde_json::Map::new();
        m.insert("repository".into(), Value::from(self.repository.as_str()));
        m.insert("digest".into(), Value::from(self.digest.to_string()));
        for (k, v) in extra {
            m.insert(k.into(), v);
        }
        Value::Object(m)
    }

    /// The registry could not be asked or did not answer usefully: refuse rather than guess.
    pub fn unavailable(&self, reason: &str) -> Refusal {
        let error = OciError::new(
            503,
            "UNAVAILABLE",
            format!(
                "Cannot verify that manifest '{}' is not held by an immutable tag: {reason}",
                self.digest
            ),
            self.detail(vec![("reason", Value::from(reason))]),
        );
        Refusal { error, pass_challenge: false, held: Vec::new() }
    }

    fn auth(&self, status: u16) -> Refusal {
        let (code, msg) = if status == 401 {
            ("UNAUTHORIZED", "authentication required")
        } else {
            ("DENIED", "requested access to the resource is denied")
        };
        let error = OciError::new(status, code, msg, self.detail(Vec::new()));
        Refusal { error, pass_challenge: true, held: Vec::new() }
    }

    /// Reads one `tags/list` answer (`path` is the page that was asked for). `Ok(Some(next))`:
    /// fetch that page next; `Ok(None)`: the listing is complete.
    pub fn on_page(
        &mut self,
        policy: &Policy,
        path: &str,
        status: Option<&str>,
        body: &[u8],
        links: &[&str],
    ) -> Result<Option<String>, Refusal> {
        self.pages += 1;
        self.visited.insert(path.to_string());
        let code = match status.map(|s| s.trim().parse::<u16>()) {
            None => return Err(self.unavailable("the registry reset the tags/list request")),
            Some(Err(_)) => {
                return Err(self.unavailable("the registry answered tags/list with an invalid status"))
            }
            Some(Ok(c)) => c,
        };
        let tags = match code {
            200 => parse_tags_page(body).map_err(|e| self.unavailable(&e))?,
            // No such repository: no tag can hold the digest (the registry answers the delete).
            404 => Vec::new(),
            401 | 403 => return Err(self.auth(code)),
            504 => return Err(self.unavailable("the registry did not answer tags/list in time (504)")),
            c => return Err(self.unavailable(&format!("the registry answered tags/list with status {c}"))),
        };
        for tag in tags {
            if self.immutable.contains_key(&tag) {
                continue;
            }
            let d = policy.decide(&self.repository, &tag);
            if d.immutable {
                self.immutable.insert(tag, Candidate { reason: d.reason, lookup: Lookup::Unknown });
            }
        }
        if self.immutable.len() > self.max_immutable_tags {
            let error = OciError::new(
                409,
                "DENIED",
                format!(
                    "Cannot verify that manifest '{}' is not held by an immutable tag: the repository has more than {} immutable tags to check (deletes.max_immutable_tags)",
                    self.digest, self.max_immutable_tags
                ),
                self.detail(vec![("max_immutable_tags", Value::from(self.max_immutable_tags))]),
            );
            return Err(Refusal { error, pass_challenge: false, held: Vec::new() });
        }
        let next = if code == 200 {
            next_page_path(links, &self.repository, path).map_err(|e| self.unavailable(&e))?
        } else {
            None
        };
        match next {
            Some(n) if self.visited.contains(&n) => {
                Err(self.unavailable("the registry's tags/list pagination loops back to a page already read"))
            }
            Some(_) if self.pages >= MAX_PAGES => {
                Err(self.unavailable(&format!("the registry's tags/list has more than {MAX_PAGES} pages")))
            }
            Some(n) => Ok(Some(n)),
            None => {
                self.listed = true;
                Ok(None)
            }
        }
    }

    /// Immutable tags whose digest is not known yet and not being asked for, when the map may
    /// help: only a non-exhaustive check can refuse on its word (`hint`).
    pub fn unknown(&self) -> Vec<String> {
        if self.exhaustive {
            return Vec::new();
        }
        self.immutable.iter().filter(|(_, c)| c.lookup == Lookup::Unknown).map(|(t, _)| t.clone()).collect()
    }

    /// The map says `tag` points to `digest`: if that is the digest being deleted, refuse sooner
    /// (a non-exhaustive check); anything else is asked of the registry all the same.
    pub fn hint(&mut self, tag: &str, digest: &Digest) {
        if *digest == self.digest && !self.exhaustive && self.immutable.contains_key(tag) {
            self.hinted.insert(tag.to_string());
        }
    }

    /// A tag's digest as the registry answered it; `None`: the tag is absent.
    fn learn(&mut self, tag: &str, digest: Option<Digest>) {
        if let Some(c) = self.immutable.get_mut(tag) {
            c.lookup = Lookup::Known(digest);
        }
    }

    /// Tags to `HEAD` now, keeping at most `MAX_IN_FLIGHT` out; they are marked in flight.
    pub fn take_heads(&mut self) -> Vec<String> {
        let in_flight = self.immutable.values().filter(|c| c.lookup == Lookup::InFlight).count();
        let room = MAX_IN_FLIGHT.saturating_sub(in_flight);
        let mut out = Vec::new();
        for (tag, c) in self.immutable.iter_mut().filter(|(_, c)| c.lookup == Lookup::Unknown).take(room) {
            c.lookup = Lookup::InFlight;
            out.push(tag.clone());
        }
        out
    }

    /// A HEAD could not even be sent: the tag goes back to unknown (the host refuses anyway).
    pub fn on_head(&mut self, tag: &str, answer: Current) -> Result<(), Refusal> {
        match answer {
            Current::Present(d) => self.learn(tag, Some(d)),
            // Deleted since the listing: it holds nothing.
            Current::Absent => self.learn(tag, None),
            Current::AuthRequired { status } => return Err(self.auth(status)),
            Current::Unknown { reason } => return Err(self.unavailable(&format!("tag '{tag}': {reason}"))),
            // The caller fetches the manifest first; reaching here means it could not.
            Current::NoDigest => {
                return Err(
                    self.unavailable(&format!("tag '{tag}': the registry answered HEAD without a digest"))
                )
            }
        }
        Ok(())
    }

    /// The decision so far. A non-exhaustive check refuses as soon as one immutable tag is known
    /// (or hinted) to hold the digest; an exhaustive one once the registry answered for every
    /// immutable tag, naming all that hold it. Allowed only when the registry said, for every
    /// immutable tag, that it points elsewhere.
    pub fn step(&self) -> Step {
        let mut resolved = self.listed;
        let mut other_algorithm = None;
        let mut held = Vec::new();
        for (tag, c) in &self.immutable {
            match &c.lookup {
                Lookup::Known(Some(d)) if *d == self.digest => held.push(tag.clone()),
                Lookup::Known(Some(d)) if d.algorithm() != self.digest.algorithm() => {
                    other_algorithm = Some(tag)
                }
                Lookup::Known(_) => {}
                Lookup::Unknown | Lookup::InFlight => resolved = false,
            }
        }
        if !self.exhaustive {
            // The first in order, so that which tag is named does not depend on answer order
            // when several are known.
            let first = held.first().or(self.hinted.iter().next());
            if let Some(tag) = first.cloned() {
                return Step::Refuse(self.held(vec![tag]));
            }
        }
        if !resolved {
            return Step::Wait;
        }
        if let Some(tag) = other_algorithm {
            // Digests of different algorithms cannot be compared: the tag might hold this content.
            // Not for break-glass to lift: nobody can say what the delete would remove.
            let reason = format!("immutable tag '{tag}' is reported with a digest of another algorithm");
            let error = OciError::new(
                409,
                "DENIED",
                format!(
                    "Cannot verify that manifest '{}' is not held by an immutable tag: {reason}",
                    self.digest
                ),
                self.detail(vec![("reason", Value::from(reason))]),
            );
            return Step::Refuse(Refusal { error, pass_challenge: false, held: Vec::new() });
        }
        if !held.is_empty() {
            return Step::Refuse(self.held(held));
        }
        Step::Allow
    }

    fn held(&self, tags: Vec<String>) -> Refusal {
        // Built by hand: loops cost the module less than iterator chains.
        let (mut names, mut list) = (String::new(), Vec::new());
        for t in &tags {
            names.push_str(if names.is_empty() { "'" } else { ", '" });
            names.push_str(t);
            names.push('\'');
            list.push(Value::from(t.as_str()));
        }
        let first = tags.first().map(String::as_str).unwrap_or_default();
        let reason = self.immutable.get(first).map(|c| c.reason.as_str()).unwrap_or_default();
        let s = if tags.len() == 1 { "" } else { "s" };
        let error = OciError::new(
            409,
            &self.error_code,
            format!("Manifest '{}' is held by immutable tag{s} {names} and cannot be deleted", self.digest),
            self.detail(vec![
                ("tag", Value::from(first)),
                ("tags", Value::Array(list)),
                ("reason", Value::from(reason)),
            ]),
        );
        Refusal { error, pass_challenge: false, held: tags }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    // The same tests run on wasm32 under wasm-bindgen-test (Node.js).
    use crate::config::Config;
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn policy(json: &str) -> Policy {
        Config::from_json(json.as_bytes()).unwrap().policy
    }
    fn global() -> Policy {
        policy(
            r#"{"global": {"immutable_tags": true, "immutable_tags_exclusions": ["^latest$", "^dev-.*$"]}}"#,
        )
    }
    fn d(s: &str) -> Digest {
        Digest::sha256(s.as_bytes())
    }
    fn page(tags: &[&str]) -> Vec<u8> {
        json!({"name": "app", "tags": tags}).to_string().into_bytes()
    }
    fn check(max: usize) -> DigestCheck {
        DigestCheck::new("app", d("target"), "TAG_IMMUTABLE", max, false)
    }
    fn refusal(step: Step) -> OciError {
        match step {
            Step::Refuse(r) => r.error,
            s => panic!("expected a refusal, got {s:?}"),
        }
    }
    const FIRST: &str = "/v2/app/tags/list";

    #[test]
    fn tag_deletes_follow_the_policy() {
        let p = global();
        let e = tag_delete(&p, "TAG_IMMUTABLE", "app", "v1").unwrap();
        assert_eq!(e.status, 409);
        assert_eq!(e.code, "TAG_IMMUTABLE");
        assert_eq!(e.message, "Tag 'v1' is immutable and cannot be deleted");
        assert_eq!(
            e.detail,
            json!({"repository": "app", "tag": "v1", "reason": "global.immutable_tags = true"})
        );
        assert_eq!(tag_delete(&p, "CONFLICT", "app", "v1").unwrap().code, "CONFLICT");
        assert_eq!(tag_delete(&p, "TAG_IMMUTABLE", "app", "latest"), None);
        assert_eq!(tag_delete(&policy("{}"), "TAG_IMMUTABLE", "app", "v1"), None);
    }

    #[test]
    fn pages_parse_and_garbage_is_an_error() {
        assert_eq!(parse_tags_page(&page(&["v1", "latest"])).unwrap(), vec!["v1", "latest"]);
        assert_eq!(parse_tags_page(br#"{"name":"app","tags":null}"#).unwrap(), Vec::<String>::new());
        assert_eq!(parse_tags_page(br#"{"name":"app"}"#).unwrap(), Vec::<String>::new());
        assert!(parse_tags_page(b"<html>").is_err());
        assert!(parse_tags_page(br#"{"tags":"v1"}"#).is_err());
        assert!(parse_tags_page(br#"{"tags":["../x"]}"#).unwrap_err().contains("invalid tag"));
    }

    #[test]
    fn link_headers() {
        let cur = "/v2/app/tags/list?n=2";
        let ok = |l: &str| next_page_path(&[l], "app", cur).unwrap();
        assert_eq!(
            ok(r#"</v2/app/tags/list?n=2&last=b>; rel="next""#).as_deref(),
            Some("/v2/app/tags/list?n=2&last=b")
        );
        assert_eq!(
            ok(r#"<https://reg.example:5000/v2/app/tags/list?last=b&n=2>; rel=next"#).as_deref(),
            Some("/v2/app/tags/list?last=b&n=2")
        );
        assert_eq!(ok(r#"<?n=2&last=b>; rel="next""#).as_deref(), Some("/v2/app/tags/list?n=2&last=b"));
        assert_eq!(
            ok(r#"</v2/app/tags/list?last=a>; rel="prev", </v2/app/tags/list?last=c>; REL="Next""#)
                .as_deref(),
            Some("/v2/app/tags/list?last=c")
        );
        assert_eq!(ok(r#"</v2/app/tags/list?last=a>; rel="prev""#), None);
        assert_eq!(next_page_path(&[], "app", cur).unwrap(), None);
        // Separate headers: each is read; the same next twice is one page, two are an error.
        let (first, next) =
            (r#"</v2/app/tags/list?n=2>; rel="first""#, r#"</v2/app/tags/list?last=b>; rel="next""#);
        assert_eq!(
            next_page_path(&[first, next], "app", cur).unwrap().as_deref(),
            Some("/v2/app/tags/list?last=b")
        );
        assert_eq!(
            next_page_path(&[next, next], "app", cur).unwrap().as_deref(),
            Some("/v2/app/tags/list?last=b")
        );
        assert!(next_page_path(&[next, r#"<?last=c>; rel="next""#], "app", cur)
            .unwrap_err()
            .contains("two next pages"));
        assert!(next_page_path(&[r#"<?last=b>; rel=next, <?last=c>; rel=next"#], "app", cur).is_err());
        for bad in [
            r#"</v2/other/tags/list?last=b>; rel="next""#,
            r#"</v2/app/tags/list/../../other?last=b>; rel="next""#,
            r#"<https://reg.example>; rel="next""#,
            r#"<tags/list?last=b>; rel="next""#,
            r#"</v2/app/tags/list?last=a b>; rel="next""#,
        ] {
            assert!(next_page_path(&[bad], "app", cur).is_err(), "{bad}");
        }
    }

    #[test]
    fn page_paths() {
        assert_eq!(first_page_path("team/app", None), "/v2/team/app/tags/list");
        assert_eq!(first_page_path("team/app", Some(50)), "/v2/team/app/tags/list?n=50");
    }

    #[test]
    fn a_digest_held_by_an_immutable_tag_is_refused() {
        let mut c = check(1000);
        let next =
            c.on_page(&global(), FIRST, Some("200"), &page(&["v1", "v2", "latest", "dev-3"]), &[]).unwrap();
        assert_eq!(next, None);
        assert_eq!(c.unknown(), vec!["v1", "v2"], "only immutable tags are checked");
        assert_eq!(c.step(), Step::Wait);
        c.learn("v1", Some(d("other")));
        assert_eq!(c.take_heads(), vec!["v2"]);
        assert_eq!(c.take_heads(), Vec::<String>::new(), "in flight is not sent twice");
        assert_eq!(c.step(), Step::Wait);
        c.on_head("v2", Current::Present(d("target"))).unwrap();
        let e = refusal(c.step());
        assert_eq!(e.status, 409);
        assert_eq!(e.code, "TAG_IMMUTABLE");
        assert_eq!(
            e.message,
            format!("Manifest '{}' is held by immutable tag 'v2' and cannot be deleted", d("target"))
        );
        assert_eq!(e.detail["tag"], "v2");
        assert_eq!(e.detail["digest"], d("target").to_string());
        assert_eq!(e.detail["reason"], "global.immutable_tags = true");
    }

    #[test]
    fn refusal_does_not_wait_for_the_rest() {
        let mut c = check(1000);
        c.on_page(&global(), FIRST, Some("200"), &page(&["a", "b", "c"]), &[]).unwrap();
        assert_eq!(c.take_heads().len(), 3);
        c.on_head("b", Current::Present(d("target"))).unwrap();
        assert!(matches!(c.step(), Step::Refuse(_)));
    }

    #[test]
    fn a_digest_held_only_by_mutable_tags_is_allowed() {
        let mut c = check(1000);
        c.on_page(&global(), FIRST, Some("200"), &page(&["v1", "latest", "dev-1"]), &[]).unwrap();
        assert_eq!(c.take_heads(), vec!["v1"]);
        c.on_head("v1", Current::Present(d("other"))).unwrap();
        assert_eq!(c.step(), Step::Allow);

        let mut c = check(1000);
        c.on_page(&global(), FIRST, Some("200"), &page(&["v1"]), &[]).unwrap();
        c.take_heads();
        c.on_head("v1", Current::Absent).unwrap();
        assert_eq!(c.step(), Step::Allow, "a tag deleted since the listing holds nothing");

        let mut c = check(1000);
        c.on_page(&global(), FIRST, Some("404"), b"{}", &[]).unwrap();
        assert_eq!(c.step(), Step::Allow, "no repository, no tags");

        let mut c = check(1000);
        c.on_page(&global(), FIRST, Some("200"), br#"{"name":"app","tags":null}"#, &[]).unwrap();
        assert_eq!(c.step(), Step::Allow);
    }

    #[test]
    fn pagination_is_followed_before_deciding() {
        let mut c = check(1000);
        let p = global();
        let link = r#"</v2/app/tags/list?n=2&last=v2>; rel="next""#;
        let next =
            c.on_page(&p, "/v2/app/tags/list?n=2", Some("200"), &page(&["v1", "v2"]), &[link]).unwrap();
        assert_eq!(next.as_deref(), Some("/v2/app/tags/list?n=2&last=v2"));
        c.take_heads();
        c.on_head("v1", Current::Present(d("x"))).unwrap();
        c.on_head("v2", Current::Present(d("y"))).unwrap();
        assert_eq!(c.step(), Step::Wait, "more pages to read");
        let next =
            c.on_page(&p, "/v2/app/tags/list?n=2&last=v2", Some("200"), &page(&["v2", "v3"]), &[]).unwrap();
        assert_eq!(next, None);
        assert_eq!(c.unknown(), vec!["v3"], "v2 is not checked twice");
        c.take_heads();
        c.on_head("v3", Current::Present(d("target"))).unwrap();
        assert_eq!(refusal(c.step()).detail["tag"], "v3");
    }

    #[test]
    fn pagination_loops_are_refused() {
        let mut c = check(1000);
        let link = r#"</v2/app/tags/list?n=2>; rel="next""#;
        let e =
            c.on_page(&global(), "/v2/app/tags/list?n=2", Some("200"), &page(&["v1"]), &[link]).unwrap_err();
        assert_eq!(e.error.status, 503);
        assert!(e.error.message.contains("loops"), "{}", e.error.message);
    }

    #[test]
    fn too_many_pages_are_refused() {
        let mut c = check(1000);
        let mut path = FIRST.to_string();
        let mut refused = None;
        for i in 0..=MAX_PAGES {
            let link = format!("</v2/app/tags/list?last=t{i}>; rel=\"next\"");
            match c.on_page(&policy("{}"), &path, Some("200"), &page(&[]), &[link.as_str()]) {
                Ok(Some(n)) => path = n,
                Ok(None) => unreachable!(),
                Err(e) => {
                    refused = Some((i, e));
                    break;
                }
            }
        }
        let (i, e) = refused.unwrap();
        assert_eq!(i + 1, MAX_PAGES);
        assert!(e.error.message.contains("pages"));
    }

    #[test]
    fn in_flight_heads_are_bounded() {
        let mut c = check(1000);
        let tags: Vec<String> = (0..20).map(|i| format!("v{i:02}")).collect();
        let refs: Vec<&str> = tags.iter().map(String::as_str).collect();
        c.on_page(&global(), FIRST, Some("200"), &page(&refs), &[]).unwrap();
        let first = c.take_heads();
        assert_eq!(first.len(), MAX_IN_FLIGHT);
        assert!(c.take_heads().is_empty());
        c.on_head(&first[0], Current::Present(d("x"))).unwrap();
        c.on_head(&first[1], Current::Absent).unwrap();
        assert_eq!(c.take_heads().len(), 2, "one sent for each answer");
        let mut sent = first.len() + 2;
        loop {
            let inflight: Vec<String> = c
                .immutable
                .iter()
                .filter(|(_, x)| x.lookup == Lookup::InFlight)
                .map(|(t, _)| t.clone())
                .collect();
            assert!(inflight.len() <= MAX_IN_FLIGHT);
            if inflight.is_empty() {
                break;
            }
            for t in inflight {
                c.on_head(&t, Current::Present(d("x"))).unwrap();
            }
            sent += c.take_heads().len();
        }
        assert_eq!(sent, 20, "every immutable tag asked once");
        assert_eq!(c.step(), Step::Allow);
    }

    #[test]
    fn the_bound_on_immutable_tags_refuses_with_a_clear_error() {
        let mut c = check(2);
        let e = c.on_page(&global(), FIRST, Some("200"), &page(&["a", "b", "c", "latest"]), &[]).unwrap_err();
        assert_eq!(e.error.status, 409);
        assert_eq!(e.error.code, "DENIED");
        assert!(e.error.message.contains("more than 2 immutable tags"), "{}", e.error.message);
        let mut c = check(2);
        assert!(
            c.on_page(&global(), FIRST, Some("200"), &page(&["a", "b", "latest", "dev-1"]), &[]).is_ok(),
            "mutable tags do not count"
        );
    }

    #[test]
    fn upstream_errors_refuse_with_503() {
        for (status, body) in [
            (Some("500"), &b"{}"[..]),
            (Some("504"), b""),
            (None, b""),
            (Some("x"), b""),
            (Some("200"), b"not json"),
            (Some("302"), b""),
        ] {
            let mut c = check(1000);
            let e = c.on_page(&global(), FIRST, status, body, &[]).unwrap_err();
            assert_eq!(e.error.status, 503, "{status:?}");
            assert_eq!(e.error.code, "UNAVAILABLE");
            assert!(!e.pass_challenge);
            assert_eq!(e.error.detail["digest"], d("target").to_string());
        }
        let mut c = check(1000);
        c.on_page(&global(), FIRST, Some("200"), &page(&["v1"]), &[]).unwrap();
        c.take_heads();
        let e = c
            .on_head(
                "v1",
                Current::Unknown { reason: "the registry did not answer HEAD in time (504)".into() },
            )
            .unwrap_err();
        assert_eq!(e.error.status, 503);
        assert!(e.error.message.contains("tag 'v1'"));
    }

    #[test]
    fn auth_answers_pass_back() {
        // The OCI error code matches the status: a client reads UNAUTHORIZED as "log in".
        for (s, code) in [(401u16, "UNAUTHORIZED"), (403, "DENIED")] {
            let mut c = check(1000);
            let e = c.on_page(&global(), FIRST, Some(&s.to_string()), b"", &[]).unwrap_err();
            assert_eq!((e.error.status, e.error.code.as_str()), (s, code));
            assert!(e.pass_challenge);
            let mut c = check(1000);
            c.on_page(&global(), FIRST, Some("200"), &page(&["v1"]), &[]).unwrap();
            c.take_heads();
            let e = c.on_head("v1", Current::AuthRequired { status: s }).unwrap_err();
            assert_eq!((e.error.status, e.error.code.as_str(), e.pass_challenge), (s, code, true));
        }
    }

    #[test]
    fn another_algorithm_cannot_be_compared() {
        let mut c = check(1000);
        c.on_page(&global(), FIRST, Some("200"), &page(&["v1"]), &[]).unwrap();
        c.learn("v1", Some(Digest::of(crate::oci::digest::Algorithm::Sha512, b"x")));
        let e = refusal(c.step());
        assert_eq!(e.status, 409);
        assert!(e.message.contains("another algorithm"));
    }

    #[test]
    fn the_map_refuses_sooner_but_never_allows() {
        // The map says v1 points elsewhere: the registry is asked all the same, and its word
        // (v1 holds the digest) refuses.
        let mut c = check(1000);
        c.on_page(&global(), FIRST, Some("200"), &page(&["v1"]), &[]).unwrap();
        c.hint("v1", &d("other"));
        assert_eq!(c.step(), Step::Wait, "a map entry saying elsewhere is not the registry's word");
        assert_eq!(c.take_heads(), vec!["v1"]);
        c.on_head("v1", Current::Present(d("target"))).unwrap();
        assert_eq!(refusal(c.step()).detail["tag"], "v1");
        // The map says v1 holds it: refused without a HEAD.
        let mut c = check(1000);
        c.on_page(&global(), FIRST, Some("200"), &page(&["v1", "v2"]), &[]).unwrap();
        c.hint("v2", &d("target"));
        let e = refusal(c.step());
        assert_eq!(e.detail["tags"], json!(["v2"]));
    }

    #[test]
    fn an_exhaustive_check_names_every_holder_on_the_registry_word() {
        let mut c = DigestCheck::new("app", d("target"), "TAG_IMMUTABLE", 1000, true);
        c.on_page(&global(), FIRST, Some("200"), &page(&["v9", "a-scratch", "v1", "latest"]), &[]).unwrap();
        assert!(c.unknown().is_empty(), "the map is not consulted");
        c.hint("v9", &d("target"));
        assert_eq!(c.step(), Step::Wait, "a hint does not stand for the registry");
        let heads = c.take_heads();
        assert_eq!(heads, vec!["a-scratch", "v1", "v9"]);
        // Whichever answers first, the outcome is the same.
        c.on_head("v9", Current::Present(d("target"))).unwrap();
        assert_eq!(c.step(), Step::Wait, "not before every tag answered");
        c.on_head("v1", Current::Present(d("other"))).unwrap();
        assert_eq!(c.step(), Step::Wait);
        c.on_head("a-scratch", Current::Present(d("target"))).unwrap();
        let Step::Refuse(r) = c.step() else { panic!("refused") };
        assert_eq!(r.held, vec!["a-scratch", "v9"]);
        assert_eq!(r.error.detail["tags"], json!(["a-scratch", "v9"]));
        assert_eq!(r.error.detail["tag"], "a-scratch");
        assert_eq!(
            r.error.message,
            format!(
                "Manifest '{}' is held by immutable tags 'a-scratch', 'v9' and cannot be deleted",
                d("target")
            )
        );
    }
}
