//! The decision on a tag push, once the filter knows the tag's current digest and the digest of
//! the manifest being pushed; and how an upstream HEAD answer is read.

use crate::oci::digest::Digest;

/// What the upstream said about a tag, from a dispatched `HEAD /v2/<name>/manifests/<tag>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Current {
    /// The tag exists and points to this digest.
    Present(Digest),
    /// 404: the tag (or the repository) does not exist.
    Absent,
    /// 401/403: the client must authenticate; passed back with the registry's challenge.
    AuthRequired { status: u16 },
    /// 200 without a usable `Docker-Content-Digest` (container-registry 0.3.1 sends none):
    /// the digest is learned from the manifest a GET returns (`read_get`).
    NoDigest,
    /// Anything else: the filter cannot know the current digest and refuses.
    Unknown { reason: String },
}

/// Reads a HEAD answer. `status` is `None` when the call had no `:status` (a reset).
pub fn read_head(status: Option<&str>, digest_header: Option<&str>) -> Current {
    let Some(status) = status else {
        return Current::Unknown { reason: "the registry reset the HEAD request".into() };
    };
    let code: u16 = match status.trim().parse() {
        Ok(c) => c,
        Err(_) => {
            return Current::Unknown { reason: format!("the registry answered HEAD with status {status:?}") }
        }
    };
    match code {
        200 => match digest_header.map(str::trim).and_then(Digest::parse) {
            Some(d) => Current::Present(d),
            None => Current::NoDigest,
        },
        404 => Current::Absent,
        401 | 403 => Current::AuthRequired { status: code },
        // Envoy reports a timed-out dispatched call as a synthetic 504.
        504 => Current::Unknown { reason: "the registry did not answer HEAD in time (504)".into() },
        c => Current::Unknown { reason: format!("the registry answered HEAD with status {c}") },
    }
}

/// Reads the answer to the GET sent after a `NoDigest` HEAD: the tag's digest is the sha256 of
/// the manifest bytes (`body`: `None` if unreadable), which must fit in `max` bytes.
pub fn read_get(status: Option<&str>, body: Option<&[u8]>, body_size: usize, max: usize) -> Current {
    match read_head(status, None) {
        Current::NoDigest if body_size > max => Current::Unknown {
            reason: format!(
                "the manifest the registry holds is larger than max_manifest_bytes ({max} bytes)"
            ),
        },
        Current::NoDigest => match body {
            Some(b) if !b.is_empty() => Current::Present(Digest::sha256(b)),
            _ => {
                Current::Unknown { reason: "the registry answered GET of the manifest without a body".into() }
            }
        },
        Current::Unknown { reason } => {
            Current::Unknown { reason: reason.replace("HEAD", "GET of the manifest") }
        }
        other => other,
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A new tag: let the push through.
    AllowNew,
    /// The same digest again: an idempotent re-push, let through.
    AllowSame,
    /// The tag holds another digest: refuse.
    Overwrite { current: Digest },
}

/// Judges a push of `pushed` to a tag whose state is known (`Present` or `Absent`).
pub fn judge(current: Option<&Digest>, pushed: &Digest) -> Verdict {
    match current {
        None => Verdict::AllowNew,
        Some(c) if c == pushed => Verdict::AllowSame,
        Some(c) => Verdict::Overwrite { current: c.clone() },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    // The same tests run on wasm32 under wasm-bindgen-test (Node.js).
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn head_answers() {
        assert_eq!(read_head(Some("200"), Some(D)), Current::Present(Digest::parse(D).unwrap()));
        assert_eq!(read_head(Some("404"), None), Current::Absent);
        assert_eq!(read_head(Some("401"), None), Current::AuthRequired { status: 401 });
        assert_eq!(read_head(Some("403"), None), Current::AuthRequired { status: 403 });
        assert_eq!(read_head(Some("200"), None), Current::NoDigest);
        assert_eq!(read_head(Some("200"), Some("garbage")), Current::NoDigest);
        for (s, d) in [
            (Some("504"), None),
            (Some("500"), Some(D)),
            (Some("x"), None),
            (None, None),
            (Some("302"), None),
        ] {
            assert!(matches!(read_head(s, d), Current::Unknown { .. }), "{s:?} {d:?}");
        }
        assert!(
            matches!(read_head(Some("504"), None), Current::Unknown { reason } if reason.contains("in time"))
        );
    }

    #[test]
    fn get_answers() {
        let m = br#"{"schemaVersion":2}"#;
        assert_eq!(read_get(Some("200"), Some(m), m.len(), 100), Current::Present(Digest::sha256(m)));
        assert!(
            matches!(read_get(Some("200"), Some(m), m.len(), 5), Current::Unknown { reason } if reason.contains("max_manifest_bytes"))
        );
        assert_eq!(
            read_get(Some("200"), Some(m), m.len(), m.len()),
            Current::Present(Digest::sha256(m)),
            "exactly the limit fits"
        );
        assert!(
            matches!(read_get(Some("200"), Some(m), m.len(), m.len() - 1), Current::Unknown { .. }),
            "one byte over"
        );
        assert!(matches!(read_get(Some("200"), Some(b""), 0, 100), Current::Unknown { .. }));
        assert!(matches!(read_get(Some("200"), None, 9, 100), Current::Unknown { .. }));
        assert_eq!(read_get(Some("404"), None, 50, 100), Current::Absent);
        assert_eq!(read_get(Some("401"), None, 50, 100), Current::AuthRequired { status: 401 });
        assert!(
            matches!(read_get(Some("500"), None, 0, 100), Current::Unknown { reason } if reason.contains("GET"))
        );
        assert!(matches!(read_get(None, None, 0, 100), Current::Unknown { .. }));
    }

    #[test]
    fn judging() {
        let a = Digest::sha256(b"a");
        let b = Digest::sha256(b"b");
        assert_eq!(judge(None, &a), Verdict::AllowNew);
        assert_eq!(judge(Some(&a), &a), Verdict::AllowSame);
        assert_eq!(judge(Some(&a), &b), Verdict::Overwrite { current: a });
    }
}
