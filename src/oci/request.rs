//! Request classification: which requests touch a tag, read the way the registry will read them.
//!
//! distribution routes on the percent-decoded path, and a repository name may itself contain a
//! `manifests` component, so the filter decodes first and splits at the *last* `/manifests/`.
//! Any write to a manifests route that the filter cannot read with certainty is refused: a
//! request that looks harmless to the filter but not to the registry would be a bypass.

use crate::oci::digest::Digest;
use crate::oci::error::OciError;
use percent_encoding::percent_decode_str;

/// What a request means to the filter.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// Not a manifest write: passed on at once, untouched.
    Other,
    /// GET/HEAD of a manifest.
    ManifestRead { repository: String, reference: Reference },
    /// PUT of a manifest. `tags` are every tag the request writes: the path reference when it
    /// is a tag, plus every `?tag=` parameter.
    ManifestPut { repository: String, reference: Reference, tags: Vec<String> },
    /// DELETE of a manifest by tag or digest.
    ManifestDelete { repository: String, reference: Reference },
    /// DELETE of a blob (`/v2/<name>/blobs/<digest>`; whatever the digest: it is refused or
    /// let through by repository, see `deletes.blobs`).
    BlobDelete { repository: String },
    /// A write to a manifests route the filter cannot judge: refused with this error.
    Invalid(OciError),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    Tag(String),
    Digest(Digest),
}

enum Method {
    Read,
    Put,
    Delete,
    Other,
}

fn method_of(method: &str) -> Method {
    // Methods are case-sensitive in HTTP, but a registry that folds case must not see a write
    // the filter took for something else.
    if method.eq_ignore_ascii_case("PUT") {
        Method::Put
    } else if method.eq_ignore_ascii_case("DELETE") {
        Method::Delete
    } else if method.eq_ignore_ascii_case("GET") || method.eq_ignore_ascii_case("HEAD") {
        Method::Read
    } else {
        Method::Other
    }
}

/// The default of `max_tags_per_push`: `?tag=` parameters one push may carry.
pub const DEFAULT_MAX_TAGS_PER_PUSH: usize = 16;

/// Classifies a request from its `:method` and raw `:path`, with the default `?tag=` cap.
pub fn classify(method: &str, raw_path: &str) -> Request {
    classify_with(method, raw_path, DEFAULT_MAX_TAGS_PER_PUSH)
}

/// Classifies a request; a PUT with more than `max_tags` `?tag=` parameters (repeats counted) is
/// `Invalid`: each named tag costs a lookup and a claim, so one request must not name thousands.
pub fn classify_with(method: &str, raw_path: &str, max_tags: usize) -> Request {
    let method = method_of(method);
    if matches!(method, Method::Other) {
        return Request::Other;
    }
    let (raw, query) = match raw_path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (raw_path, None),
    };
    if matches!(method, Method::Delete) {
        if let Some(r) = blob_delete(raw, raw_path).or_else(|| tag_reference_delete(raw, raw_path)) {
            return r;
        }
    }
    if !may_name_manifests(raw) {
        return Request::Other;
    }
    let is_write = matches!(method, Method::Put | Method::Delete);
    let refuse = |code: &str, msg: &str| {
        if is_write {
            Request::Invalid(OciError::unclassifiable(code, msg, raw_path))
        } else {
            Request::Other
        }
    };
    let path = match decode(raw) {
        Some(p) => p,
        // A write whose path cannot be decoded cannot be judged, whatever its raw spelling says
        // (`%6danifests/...%A3`: HTTP/2's bytes >= 0x80 arrive escaped; found by the fuzzer).
        None => {
            return refuse(
                "NAME_INVALID",
                "Malformed or non-UTF-8 percent-encoding in a path the filter must judge",
            )
        }
    };
    if !mentions_manifests(&path) {
        return Request::Other;
    }
    let Some(rest) = strip_prefix_ignore_case(&path, "/v2/") else {
        // A manifests path outside /v2/ is no registry API route (e.g. `//v2/..`, `/./v2/..`);
        // writes are refused all the same, in case something in front of the registry folds it.
        return refuse("NAME_INVALID", "Manifest writes must use a /v2/<name>/manifests/<reference> path");
    };
    let Some(at) = rfind_ignore_case(rest, "/manifests/") else {
        return refuse("NAME_INVALID", "Manifest writes must use a /v2/<name>/manifests/<reference> path");
    };
    let (Some(name), Some(reference)) = (rest.get(..at), rest.get(at + "/manifests/".len()..)) else {
        return refuse("NAME_INVALID", "Manifest writes must use a /v2/<name>/manifests/<reference> path");
    };
    if !is_valid_name(name) {
        return refuse("NAME_INVALID", "Invalid repository name in a manifests path");
    }
    let reference = if is_valid_tag(reference) {
        Reference::Tag(reference.to_string())
    } else if let Some(d) = Digest::parse(reference) {
        Reference::Digest(d)
    } else {
        return refuse("MANIFEST_INVALID", "Invalid tag or digest in a manifests path");
    };
    // Go before 1.17 (and other servers) also split a query at `;`: `?x=1;tag=v2` could name a
    // tag the filter never saw. No registry client sends one.
    if is_write && query.is_some_and(|q| q.contains(';')) {
        return refuse("UNSUPPORTED", "A ';' in the query of a manifest write is not accepted");
    }
    let repository = name.to_string();
    match method {
        Method::Read => Request::ManifestRead { repository, reference },
        Method::Delete => Request::ManifestDelete { repository, reference },
        Method::Put => {
            let mut tags = Vec::new();
            if let Reference::Tag(t) = &reference {
                tags.push(t.clone());
            }
            let named = query.into_iter().flat_map(|q| q.split('&')).filter_map(tag_param);
            if named.clone().count() > max_tags {
                let msg = format!("A push may name at most {max_tags} tags with ?tag= (max_tags_per_push); push the others separately");
                return refuse("UNSUPPORTED", &msg);
            }
            for value in named {
                match decode(value) {
                    Some(t) if is_valid_tag(&t) => {
                        if !tags.contains(&t) {
                            tags.push(t)
                        }
                    }
                    _ => return refuse("MANIFEST_INVALID", "Invalid tag in a ?tag= parameter"),
                }
            }
            Request::ManifestPut { repository, reference, tags }
        }
        Method::Other => Request::Other,
    }
}

/// A DELETE whose path (decoded) ends in `/blobs/<one segment>`: a blob delete, refused as
/// unreadable if it is not `/v2/<valid name>/blobs/..` (something in front of the registry
/// might fold it into one). `None`: no blob delete (an upload's cancel, `blobs/uploads/<id>`,
/// has two segments).
fn blob_delete(raw: &str, raw_path: &str) -> Option<Request> {
    if !may_name_blobs(raw) {
        return None;
    }
    let invalid = |msg: &str| Some(Request::Invalid(OciError::unclassifiable("NAME_INVALID", msg, raw_path)));
    let Some(path) = decode(raw) else {
        let says_blobs = raw.as_bytes().windows(5).any(|w| w.eq_ignore_ascii_case(b"blobs"));
        return if says_blobs { invalid("Malformed percent-encoding in a blobs path") } else { None };
    };
    let at = rfind_ignore_case(&path, "/blobs/")?;
    let segment = path.get(at + "/blobs/".len()..)?;
    if segment.is_empty() || segment.contains('/') {
        return None;
    }
    let name = path.get(..at).and_then(|p| strip_prefix_ignore_case(p, "/v2/"));
    match name {
        Some(n) if is_valid_name(n) => Some(Request::BlobDelete { repository: n.to_string() }),
        _ => invalid("Blob deletes must use a /v2/<name>/blobs/<digest> path"),
    }
}

/// GitLab's registry deletes a tag with `DELETE /v2/<name>/tags/reference/<tag>`: judged as
/// the tag delete it is; anything unreadable that says "reference" is refused.
fn tag_reference_delete(raw: &str, raw_path: &str) -> Option<Request> {
    let invalid = || {
        Some(Request::Invalid(OciError::unclassifiable(
            "NAME_INVALID",
            "Unreadable tags/reference delete path",
            raw_path,
        )))
    };
    let says = |p: &str| p.to_ascii_lowercase().contains("reference");
    let Some(path) = decode(raw) else { return if says(raw) { invalid() } else { None } };
    let at = rfind_ignore_case(&path, "/tags/reference/")?;
    let tag = path.get(at + "/tags/reference/".len()..)?;
    let name = path.get(..at).and_then(|p| strip_prefix_ignore_case(p, "/v2/"));
    match name {
        Some(n) if is_valid_name(n) && is_valid_tag(tag) => Some(Request::ManifestDelete {
            repository: n.to_string(),
            reference: Reference::Tag(tag.to_string()),
        }),
        _ => invalid(),
    }
}

/// Cheap pre-filter for blob deletes (query aside): an escape, or "blobs" in any case.
pub fn may_name_blobs(raw_path: &str) -> bool {
    let raw = raw_path.split_once('?').map_or(raw_path, |(p, _)| p);
    raw.contains('%') || raw.as_bytes().windows(5).any(|w| w.eq_ignore_ascii_case(b"blobs"))
}

/// Headers some frameworks honour in place of the method. distribution ignores them, but a
/// proxy or framework between Envoy and the registry might not, turning a request the filter
/// took for a read into a write: on a manifests or blob path they are refused.
pub const METHOD_OVERRIDE_HEADERS: [&str; 3] =
    ["x-http-method-override", "x-http-method", "x-method-override"];

/// A `_method` query key (any case, any escape), which some frameworks honour as the method.
pub fn query_overrides_method(raw_path: &str) -> bool {
    let q = raw_path.split_once('?').map_or("", |(_, q)| q);
    q.split(['&', ';']).any(|kv| {
        decode(kv.split_once('=').map_or(kv, |(k, _)| k)).is_some_and(|k| k.eq_ignore_ascii_case("_method"))
    })
}

/// Cheap pre-filter, no allocation: a path (query aside) with no escape that never says
/// "manifests" cannot be a manifests route, whatever the method. Everything else goes through
/// the full parse. The shipped Envoy config's route for the filter mirrors this test.
pub fn may_name_manifests(raw_path: &str) -> bool {
    let raw = raw_path.split_once('?').map_or(raw_path, |(p, _)| p);
    // "reference": GitLab's tag delete (`/tags/reference/<tag>`) is judged as one too.
    raw.contains('%') || mentions_manifests(raw) || raw.to_ascii_lowercase().contains("/reference/")
}

/// The value of a `tag=` query parameter (the key may itself be percent-encoded).
fn tag_param(pair: &str) -> Option<&str> {
    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
    (decode(k).as_deref() == Some("tag")).then_some(v)
}

/// Percent-decodes, refusing malformed escapes and anything that is not UTF-8. `+` stays `+`
/// (paths are not form-encoded).
fn decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut i = 0;
    while let Some(pos) = b.get(i..).and_then(|t| t.iter().position(|&c| c == b'%')) {
        let at = i + pos;
        let hex_ok = b.get(at + 1..at + 3).is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit));
        if !hex_ok {
            return None;
        }
        i = at + 3;
    }
    percent_decode_str(s).decode_utf8().ok().map(|c| c.into_owned())
}

fn mentions_manifests(path: &str) -> bool {
    path.as_bytes().windows("manifests".len()).any(|w| w.eq_ignore_ascii_case(b"manifests"))
}

fn starts_with_ignore_case(s: &str, prefix: &str) -> bool {
    s.get(..prefix.len()).is_some_and(|p| p.eq_ignore_ascii_case(prefix))
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    if starts_with_ignore_case(s, prefix) {
        s.get(prefix.len()..)
    } else {
        None
    }
}

fn rfind_ignore_case(s: &str, needle: &str) -> Option<usize> {
    // ASCII lower-casing keeps byte offsets, so an offset in the copy is one in `s`.
    s.to_ascii_lowercase().rfind(needle)
}

/// OCI repository name: `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 255 && name.split('/').all(is_valid_component)
}

fn is_valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: &u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    let mut i = 0;
    let mut need_alnum = true; // at start and after every separator
    while let Some(&x) = b.get(i) {
        if alnum(&x) {
            need_alnum = false;
            i += 1;
            continue;
        }
        if need_alnum {
            return false;
        }
        // a separator: '.', '_', '__', or a run of '-'
        let run = b.get(i..).map_or(0, |t| t.iter().take_while(|&&y| y == x).count());
        let ok = match x {
            b'.' => run == 1,
            b'_' => run <= 2,
            b'-' => true,
            _ => false,
        };
        if !ok {
            return false;
        }
        i += run;
        need_alnum = true;
    }
    !need_alnum
}

/// OCI tag: `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`
pub fn is_valid_tag(tag: &str) -> bool {
    let b = tag.as_bytes();
    let Some((first, rest)) = b.split_first() else {
        return false;
    };
    b.len() <= 128
        && (first.is_ascii_alphanumeric() || *first == b'_')
        && rest.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;
    // The same tests run on wasm32 under wasm-bindgen-test (Node.js).
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn put(path: &str) -> Request {
        classify("PUT", path)
    }
    fn tag(t: &str) -> Reference {
        Reference::Tag(t.to_string())
    }
    fn is_invalid(r: &Request) -> bool {
        matches!(r, Request::Invalid(e) if e.status == 400)
    }

    #[test]
    fn plain_tag_push() {
        assert_eq!(
            put("/v2/team/app/manifests/v1.2.3"),
            Request::ManifestPut {
                repository: "team/app".into(),
                reference: tag("v1.2.3"),
                tags: vec!["v1.2.3".into()]
            }
        );
    }

    #[test]
    fn path_is_decoded_like_the_registry_does() {
        assert_eq!(
            put("/v2/test%2Fapp/manifests/v%31"),
            Request::ManifestPut {
                repository: "test/app".into(),
                reference: tag("v1"),
                tags: vec!["v1".into()]
            }
        );
        assert_eq!(
            put("/v2/app/%6danifests/v%2e1%2D2"),
            Request::ManifestPut {
                repository: "app".into(),
                reference: tag("v.1-2"),
                tags: vec!["v.1-2".into()]
            }
        );
    }

    #[test]
    fn name_may_contain_a_manifests_component() {
        assert_eq!(
            put("/v2/a/manifests/b/manifests/v1"),
            Request::ManifestPut {
                repository: "a/manifests/b".into(),
                reference: tag("v1"),
                tags: vec!["v1".into()]
            }
        );
    }

    #[test]
    fn query_is_not_part_of_the_reference_and_tag_params_are_tags() {
        assert_eq!(
            put("/v2/app/manifests/v1?foo=bar"),
            Request::ManifestPut { repository: "app".into(), reference: tag("v1"), tags: vec!["v1".into()] }
        );
        let d = Digest::sha256(b"m");
        assert_eq!(
            put(&format!("/v2/app/manifests/{d}?tag=a&tag=b&x=1&tag=a")),
            Request::ManifestPut {
                repository: "app".into(),
                reference: Reference::Digest(d.clone()),
                tags: vec!["a".into(), "b".into()]
            }
        );
        assert_eq!(
            put(&format!("/v2/app/manifests/{d}")),
            Request::ManifestPut { repository: "app".into(), reference: Reference::Digest(d), tags: vec![] }
        );
        assert!(is_invalid(&put("/v2/app/manifests/v1?tag=bad%20tag")));
    }

    #[test]
    fn ambiguous_writes_are_refused() {
        for p in [
            "/v2/app/manifests/v1%",
            "/v2/app/manifests/v1%zz",
            "/v2/app/manifests/",
            "/v2/app/manifests/v1/",
            "/v2//app/manifests/v1",
            "/v2/./app/manifests/v1",
            "/v2/app/../other/manifests/v1",
            "/v2/app/%2e%2e/other/manifests/v1",
            "/v2/App/manifests/v1",
            "/v2/app/manifests/v1;x=y",
            "/v2/app/manifests/.v1",
            "//v2/app/manifests/v1",
            "/x/../v2/app/manifests/v1",
            "/v3/app/manifests/v1",
            "/V2x/app/manifests/v1",
            "/v2/app/manifests/sha256:abc",
            "/v2/app/manifests/v%00",
            "/v2/app/manifests/v%ff",
        ] {
            assert!(is_invalid(&put(p)), "{p}");
            assert!(is_invalid(&classify("DELETE", p)), "{p}");
            assert_eq!(classify("GET", p), Request::Other, "{p}");
        }
    }

    #[test]
    fn a_semicolon_in_a_write_query_is_refused() {
        for p in ["/v2/app/manifests/v1?x=1;tag=v2", "/v2/app/manifests/v1?;", "/v2/app/manifests/v1?tag=a;b"]
        {
            assert!(is_invalid(&put(p)), "{p}");
            assert!(is_invalid(&classify("DELETE", p)), "{p}");
            assert!(matches!(classify("GET", p), Request::ManifestRead { .. }), "{p}");
        }
        assert!(
            matches!(put("/v2/app/manifests/v1?x=%3B"), Request::ManifestPut { .. }),
            "an encoded ';' splits nothing"
        );
    }

    #[test]
    fn tag_parameters_past_the_cap_are_refused() {
        let d = Digest::sha256(b"m");
        let query = |n: usize| (0..n).map(|i| format!("tag=t{i}")).collect::<Vec<_>>().join("&");
        assert!(
            matches!(put(&format!("/v2/app/manifests/{d}?{}", query(16))), Request::ManifestPut { ref tags, .. } if tags.len() == 16)
        );
        let over = put(&format!("/v2/app/manifests/{d}?{}", query(17)));
        assert!(is_invalid(&over), "{over:?}");
        // Repeats count: the cap bounds the work of reading the query too.
        assert!(is_invalid(&put(&format!("/v2/app/manifests/v1?{}", ["tag=v1"; 17].join("&")))));
        assert!(matches!(
            classify_with("PUT", &format!("/v2/app/manifests/{d}?{}", query(3)), 2),
            Request::Invalid(_)
        ));
        assert!(matches!(classify_with("PUT", "/v2/app/manifests/v1?tag=v2", 0), Request::Invalid(_)));
        assert!(matches!(classify_with("PUT", "/v2/app/manifests/v1", 0), Request::ManifestPut { .. }));
        let Request::Invalid(e) = over else { unreachable!() };
        assert!(e.message.contains("at most 16"), "{}", e.message);
    }

    #[test]
    fn method_case_does_not_hide_a_write() {
        assert!(matches!(classify("put", "/v2/app/manifests/v1"), Request::ManifestPut { .. }));
        assert!(matches!(classify("Delete", "/v2/app/manifests/v1"), Request::ManifestDelete { .. }));
        assert!(matches!(classify("HEAD", "/v2/app/manifests/v1"), Request::ManifestRead { .. }));
    }

    #[test]
    fn other_traffic_is_other() {
        for (m, p) in [
            ("GET", "/v2/"),
            ("GET", "/v2/_catalog"),
            ("GET", "/v2/app/tags/list"),
            ("PUT", "/v2/app/blobs/uploads/abc?digest=sha256:00"),
            ("PATCH", "/v2/app/blobs/uploads/abc"),
            ("POST", "/v2/app/manifests/v1"),
            ("GET", "/healthz"),
        ] {
            assert_eq!(classify(m, p), Request::Other, "{m} {p}");
        }
    }

    #[test]
    fn pre_filter_lets_through_only_what_may_name_manifests() {
        for p in [
            "/v2/app/manifests/v1",
            "/v2/app/MANIFESTS/v1",
            "/v2/app/%6danifests/v1",
            "/v2/a%2fb/blobs/x",
            "/v2/%zz",
        ] {
            assert!(may_name_manifests(p), "{p}");
        }
        for p in [
            "/v2/",
            "/v2/_catalog",
            "/v2/app/tags/list",
            "/v2/app/blobs/uploads/x?manifests",
            "/v2/app/blobs/x?a=%6d",
            "",
        ] {
            assert!(!may_name_manifests(p), "{p}");
        }
    }

    #[test]
    fn grammar() {
        for ok in ["a", "a/b", "a.b", "a_b", "a__b", "a---b", "a0/b-c.d"] {
            assert!(is_valid_name(ok), "{ok}");
        }
        for bad in ["", "A", "a/", "/a", "a//b", "a..b", "a___b", "-a", "a-", ".", "..", "a/./b"] {
            assert!(!is_valid_name(bad), "{bad}");
        }
        assert!(is_valid_tag("_v1.0-rc"));
        assert!(is_valid_tag(&"a".repeat(128)));
        assert!(!is_valid_tag(&"a".repeat(129)));
        assert!(!is_valid_tag("-v1"));
        assert!(!is_valid_tag("v1:x"));
        assert!(!is_valid_tag(""));
    }
}

#[cfg(test)]
mod tests_blobs {
    use super::*;
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn blob(repository: &str) -> Request {
        Request::BlobDelete { repository: repository.to_string() }
    }

    #[test]
    fn blob_deletes_are_read_as_the_registry_routes_them() {
        let d = format!("sha256:{}", "a".repeat(64));
        for (path, want) in [
            (format!("/v2/app/blobs/{d}"), blob("app")),
            (format!("/v2/team/app/blobs/{d}?x=1"), blob("team/app")),
            (format!("/v2/app/BLOBS/{d}"), blob("app")),
            (format!("/v2/app/blob%73/{d}"), blob("app")),
            (format!("/v2/a/manifests/b/blobs/{d}"), blob("a/manifests/b")),
            // Not a digest: refused all the same (the registry judges the digest, not us).
            ("/v2/app/blobs/whatever".to_string(), blob("app")),
            // An upload's cancel is no blob delete; a tag delete in a repository named "blobs".
            ("/v2/app/blobs/uploads/0f3c".to_string(), Request::Other),
            (
                "/v2/a/blobs/b/manifests/v1".to_string(),
                Request::ManifestDelete {
                    repository: "a/blobs/b".into(),
                    reference: Reference::Tag("v1".into()),
                },
            ),
        ] {
            assert_eq!(classify("DELETE", &path), want, "{path}");
            assert_eq!(classify("delete", &path), want, "{path}");
            assert!(may_name_blobs(&path), "{path}");
        }
        for path in
            [format!("//v2/app/blobs/{d}"), format!("/v2/App/blobs/{d}"), "/v2/app/blobs/%zz".to_string()]
        {
            assert!(matches!(classify("DELETE", &path), Request::Invalid(e) if e.status == 400), "{path}");
        }
        // Other methods on blobs are no concern of the filter.
        assert_eq!(classify("GET", &format!("/v2/app/blobs/{d}")), Request::Other);
        assert_eq!(classify("PUT", "/v2/app/blobs/uploads/0f3c?digest=x"), Request::Other);
        assert!(!may_name_blobs("/v2/app/tags/list?n=blobs"));
    }
}
