//! Pull pinning (`"pin_immutable_pulls": true`): a GET or HEAD of an immutable tag whose digest
//! the map knows is sent to the registry as a read of that digest. A digest is content
//! addressed, so a pull-through (proxy) registry serves it from its own storage without asking
//! its upstream whether the tag moved; the tag cannot move, that is the point of the policy.
//! The client's headers (and so its credentials) are kept: the registry still decides who reads.
//!
//! A read is pinned, or taught from, only when its `Accept` names every stored manifest type
//! ([`accepts_every_stored_type`]): a registry answers a narrower read of a tag with something
//! else than the tag's manifest (distribution 2.8 answers a Docker manifest list with its
//! linux/amd64 child when the list type is missing), and answers a read by digest as stored, so
//! a pinned narrow read would get what the registry would not have given it.

use crate::oci::digest::Digest;

/// The manifest media types a registry stores as pushed. A manifest read answered with any
/// other type (distribution converts to schema 1 for old clients) has a digest that is not the
/// tag's, and must not teach the map. The filter's own HEAD (`filter::upstream::MANIFEST_ACCEPT`)
/// names all of them, and the schema 1 types, whose answers never teach.
pub const STORED_TYPES: [&str; 4] = [
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

/// The `:path` that reads `repository`'s manifest `digest`. Only a read without a query string
/// is pinned (`filter::pull`): a query may pick another upstream than the map's.
/// `repository` is already validated against the OCI grammar: it needs no escaping.
pub fn pinned_path(repository: &str, digest: &Digest) -> String {
    format!("/v2/{repository}/manifests/{digest}")
}

/// The digest a manifest read's answer teaches: a `200` for a stored manifest type with a valid
/// `Docker-Content-Digest`. Anything else teaches nothing.
pub fn learned_digest(
    status: Option<&str>,
    content_type: Option<&str>,
    digest: Option<&str>,
) -> Option<Digest> {
    if status.map(str::trim) != Some("200") {
        return None;
    }
    let media_type = content_type?.split(';').next()?.trim();
    if !STORED_TYPES.iter().any(|t| t.eq_ignore_ascii_case(media_type)) {
        return None;
    }
    Digest::parse(digest?.trim())
}

/// Whether a request whose `Accept` headers are `values` (each as received; several headers
/// allowed) is answered the tag's own manifest by any registry: every header on its own names
/// each of [`STORED_TYPES`] with a positive `q`. When in doubt, no: registries parse `Accept`
/// differently (distribution unions several headers and ignores `q` and lets a malformed element
/// drop out; others read only the first header, honour `q=0`, or compare media types as written),
/// so only a header every one of them reads alike counts: a stored type spelled in lower case,
/// with at most a `q` parameter; every element well formed (`type/subtype`, `name=token`
/// parameters, no quoted strings). `*/*` or `application/*` neither count nor hurt: distribution
/// does not take them for a manifest list.
pub fn accepts_every_stored_type<'a>(values: impl IntoIterator<Item = &'a str>) -> bool {
    let mut any = false;
    for value in values {
        any = true;
        if !header_covers(value) {
            return false;
        }
    }
    any
}

fn header_covers(value: &str) -> bool {
    let mut named = [false; STORED_TYPES.len()];
    for element in value.split(',') {
        let element = element.trim_matches([' ', '\t']);
        if element.is_empty() {
            continue; // an empty list element is allowed (RFC 9110 5.6.1)
        }
        let mut parts = element.split(';');
        let media_type = parts.next().unwrap_or_default().trim_end_matches([' ', '\t']);
        let Some((kind, sub)) = media_type.split_once('/') else { return false };
        if !is_token(kind) || !is_token(sub) {
            return false;
        }
        let stored = STORED_TYPES.iter().position(|t| *t == media_type);
        if stored.is_none() && STORED_TYPES.iter().any(|t| t.eq_ignore_ascii_case(media_type)) {
            return false; // a stored type in other case: some registries would not see it
        }
        for (n, param) in parts.enumerate() {
            let Some((name, v)) =
                param.trim_start_matches([' ', '\t']).trim_end_matches([' ', '\t']).split_once('=')
            else {
                return false;
            };
            if !is_token(name) || !is_token(v) {
                return false;
            }
            // One `q` at most: distribution drops an element with a parameter named twice.
            if stored.is_some() && (n > 0 || !(name.eq_ignore_ascii_case("q") && positive_qvalue(v))) {
                return false;
            }
        }
        if let Some(i) = stored {
            if let Some(n) = named.get_mut(i) {
                *n = true;
            }
        }
    }
    named.iter().all(|n| *n)
}

/// RFC 9110 `token`.
fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// An RFC 9110 `qvalue` above zero.
fn positive_qvalue(v: &str) -> bool {
    let (int, frac) = v.split_once('.').unwrap_or((v, ""));
    let digits = frac.len() <= 3 && frac.bytes().all(|b| b.is_ascii_digit());
    match int {
        "1" => digits && frac.bytes().all(|b| b == b'0'),
        "0" => digits && frac.bytes().any(|b| b != b'0'),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    // The same tests run on wasm32 under wasm-bindgen-test (Node.js).
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    const OCI: &str = "application/vnd.oci.image.manifest.v1+json";

    #[test]
    fn path_names_the_digest() {
        let d = Digest::parse(D).unwrap();
        assert_eq!(pinned_path("team/app", &d), format!("/v2/team/app/manifests/{D}"));
    }

    #[test]
    fn only_stored_manifests_teach_a_digest() {
        let d = Digest::parse(D).unwrap();
        assert_eq!(learned_digest(Some("200"), Some(OCI), Some(D)), Some(d.clone()));
        assert_eq!(
            learned_digest(
                Some("200"),
                Some("application/vnd.docker.distribution.manifest.v2+json; charset=utf-8"),
                Some(D)
            ),
            Some(d)
        );
        assert_eq!(
            learned_digest(
                Some("200"),
                Some("application/vnd.docker.distribution.manifest.v1+prettyjws"),
                Some(D)
            ),
            None
        );
        assert_eq!(learned_digest(Some("200"), None, Some(D)), None);
        assert_eq!(learned_digest(Some("404"), Some(OCI), Some(D)), None);
        assert_eq!(learned_digest(Some("200"), Some(OCI), None), None);
        assert_eq!(learned_digest(Some("200"), Some(OCI), Some("sha256:abc")), None);
        assert_eq!(learned_digest(None, Some(OCI), Some(D)), None);
    }

    const ALL: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json";
    const V2: &str = "application/vnd.docker.distribution.manifest.v2+json";
    const LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
    const OCI_REST: &str =
        "application/vnd.oci.image.manifest.v1+json,application/vnd.oci.image.index.v1+json";

    fn covers(values: &[&str]) -> bool {
        accepts_every_stored_type(values.iter().copied())
    }

    #[test]
    fn an_accept_that_names_every_stored_type_covers() {
        assert!(covers(&[ALL]));
        // containerd's resolver (remotes/docker/resolver.go); skopeo adds the schema 1 types.
        assert!(covers(&["application/vnd.docker.distribution.manifest.v2+json, \
application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, \
application/vnd.oci.image.index.v1+json, */*"]));
        assert!(covers(&[&format!(
            "application/vnd.docker.distribution.manifest.v1+prettyjws, {ALL}, application/json"
        )]));
        // Any order, spacing, empty elements, positive q.
        assert!(covers(&[&format!("{LIST};q=0.5 ,\t{V2} ; q=1.000,, {OCI_REST};q=1.")]));
        assert!(covers(&[&format!("{LIST};Q=0.001,{V2},{OCI_REST}")]));
        // Other elements may carry their own parameters.
        assert!(covers(&[&format!("{ALL}, text/plain;charset=utf-8;q=0")]));
        // Several headers, each complete.
        assert!(covers(&[ALL, ALL]));
    }

    #[test]
    fn anything_narrower_or_in_doubt_does_not_cover() {
        assert!(!covers(&[]), "no Accept at all");
        assert!(!covers(&[""]));
        assert!(!covers(&[V2]), "the Docker v2 type alone: distribution converts a list to its child");
        assert!(!covers(&["*/*"]), "distribution does not take */* for a list");
        assert!(!covers(&[&format!("{V2}, {OCI_REST}, application/*")]));
        assert!(!covers(&[&format!("{V2}, {OCI_REST}, {LIST};q=0")]), "q=0: not acceptable");
        assert!(!covers(&[&format!("{V2}, {OCI_REST}, {LIST};q=0.000")]));
        for bad_q in
            ["q=", "q=2", "q=0.5000", "q=0.5x", "q=.5", "q=abc", "q=1.5", "q=1.0000", "q=1.x", "q=-1"]
        {
            assert!(!covers(&[&format!("{V2}, {OCI_REST}, {LIST};{bad_q}")]), "{bad_q}");
        }
        // distribution drops an element it cannot parse, so the type would not count for it.
        for bad in
            [";", "; foo", ";foo=", ";=1", "; q = 1", ";q=\"1\"", ";charset=utf-8", ";q=1;q=1", ";q=1;x=y"]
        {
            assert!(!covers(&[&format!("{V2}, {OCI_REST}, {LIST}{bad}")]), "{bad}");
        }
        // Case: media types are case-insensitive, but not every registry compares them so.
        assert!(!covers(&[&format!("{V2}, {OCI_REST}, {}", LIST.to_uppercase())]));
        // Any malformed element: no telling how a registry reads the rest.
        for bad in ["text", "/", "a/", "a/b c", "a/\"b,c\"", "a/b;x=\"y,z\""] {
            assert!(!covers(&[&format!("{ALL}, {bad}")]), "{bad}");
        }
        // Several headers: each must cover on its own (a registry may read only one).
        assert!(!covers(&[V2, &format!("{LIST}, {OCI_REST}")]));
        assert!(!covers(&[ALL, V2]));
        assert!(!covers(&[V2, ALL]));
    }
}
