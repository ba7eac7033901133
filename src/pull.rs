//! Pull pinning (`"pin_immutable_pulls": true`): a GET or HEAD of an immutable tag whose digest
//! the map knows is sent to the registry as a read of that digest. A digest is content
//! addressed, so a pull-through (proxy) registry serves it from its own storage without asking
//! its upstream whether the tag moved; the tag cannot move, that is the point of the policy.
//! The client's headers (and so its credentials) are kept: the registry still decides who reads.

use crate::digest::Digest;

/// The manifest media types a registry stores as pushed. A manifest read answered with any
/// other type (distribution converts to schema 1 for old clients) has a digest that is not the
/// tag's, and must not teach the map.
const STORED_TYPES: [&str; 4] = [
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

/// The `:path` that reads `repository`'s manifest `digest`, keeping the original query string.
/// `repository` is already validated against the OCI grammar: it needs no escaping.
pub fn pinned_path(repository: &str, digest: &Digest, raw_path: &str) -> String {
    match raw_path.split_once('?') {
        Some((_, query)) => format!("/v2/{repository}/manifests/{digest}?{query}"),
        None => format!("/v2/{repository}/manifests/{digest}"),
    }
}

/// The digest a manifest read's answer teaches: a `200` for a stored manifest type with a valid
/// `Docker-Content-Digest`. Anything else teaches nothing.
pub fn learned_digest(status: Option<&str>, content_type: Option<&str>, digest: Option<&str>) -> Option<Digest> {
    if status.map(str::trim) != Some("200") {
        return None;
    }
    let media_type = content_type?.split(';').next()?.trim();
    if !STORED_TYPES.iter().any(|t| t.eq_ignore_ascii_case(media_type)) {
        return None;
    }
    Digest::parse(digest?.trim())
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
    fn path_names_the_digest_and_keeps_the_query() {
        let d = Digest::parse(D).unwrap();
        assert_eq!(pinned_path("team/app", &d, "/v2/team/app/manifests/v1"), format!("/v2/team/app/manifests/{D}"));
        assert_eq!(
            pinned_path("team/app", &d, "/v2/team%2Fapp/manifests/v%31?ns=docker.io"),
            format!("/v2/team/app/manifests/{D}?ns=docker.io")
        );
    }

    #[test]
    fn only_stored_manifests_teach_a_digest() {
        let d = Digest::parse(D).unwrap();
        assert_eq!(learned_digest(Some("200"), Some(OCI), Some(D)), Some(d.clone()));
        assert_eq!(learned_digest(Some("200"), Some("application/vnd.docker.distribution.manifest.v2+json; charset=utf-8"), Some(D)), Some(d));
        assert_eq!(learned_digest(Some("200"), Some("application/vnd.docker.distribution.manifest.v1+prettyjws"), Some(D)), None);
        assert_eq!(learned_digest(Some("200"), None, Some(D)), None);
        assert_eq!(learned_digest(Some("404"), Some(OCI), Some(D)), None);
        assert_eq!(learned_digest(Some("200"), Some(OCI), None), None);
        assert_eq!(learned_digest(Some("200"), Some(OCI), Some("sha256:abc")), None);
        assert_eq!(learned_digest(None, Some(OCI), Some(D)), None);
    }
}
