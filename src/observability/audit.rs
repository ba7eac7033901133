//! The audit trail: one JSON log record per refusal (or, in audit mode, per request that would
//! have been refused), with enough to answer "who tried to overwrite prod/api:v1.4.2 yesterday".

use crate::config::Mode;
use crate::observability::metrics::Refusal;
use crate::oci::error::OciError;
use serde_json::{json, Value};

/// What the host knows about the request being refused; every field may be missing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestInfo {
    pub method: Option<String>,
    pub path: Option<String>,
    pub request_id: Option<String>,
    pub client_address: Option<String>,
    pub user_agent: Option<String>,
}

/// Marks the line, so log pipelines can select refusals with a plain substring match.
pub const EVENT: &str = "immutable_tags.refusal";

/// The record for one refusal. `rule` is the policy setting that made the tag immutable
/// (`Decision::reason`), when a tag is involved.
pub fn refusal_record(
    mode: Mode,
    kind: Refusal,
    err: &OciError,
    rule: Option<&str>,
    req: &RequestInfo,
) -> Value {
    let detail = |k: &str| err.detail.get(k).and_then(Value::as_str).map(str::to_string);
    let mut record = json!({
        "event": EVENT,
        "mode": mode.as_str(),
        "action": match mode { Mode::Enforce => "refused", Mode::Audit => "would_refuse" },
        "kind": kind.as_str(),
        "status": err.status,
        "code": err.code,
        "message": err.message,
        "repository": detail("repository"),
        "tag": detail("tag"),
        "current_digest": detail("current_digest"),
        "pushed_digest": detail("pushed_digest"),
        "rule": rule,
        "break_glass": detail("break_glass"),
        "method": req.method,
        "path": req.path,
        "request_id": req.request_id,
        "client_address": req.client_address,
        "user_agent": req.user_agent,
    });
    // A delete by digest names every tag it would remove, so a search for any of them finds it.
    if let Some(r) = record.as_object_mut() {
        for k in ["digest", "tags", "not_covered"] {
            if let Some(v) = err.detail.get(k) {
                r.insert(k.into(), v.clone());
            }
        }
    }
    record
}

/// The repository and tag a refusal is about, from its OCI error detail.
pub fn subject(err: &OciError) -> Option<(&str, &str)> {
    let repository = err.detail.get("repository").and_then(Value::as_str)?;
    let tag = err.detail.get("tag").and_then(Value::as_str)?;
    Some((repository, tag))
}

#[cfg(test)]
mod tests {
    use super::*;
    // The same tests run on wasm32 under wasm-bindgen-test (Node.js).
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn overwrite() -> OciError {
        OciError::new(
            409,
            "TAG_IMMUTABLE",
            "Tag 'v1.4.2' is immutable and cannot be overwritten",
            json!({"repository": "prod/api", "tag": "v1.4.2", "current_digest": "sha256:aa",
                   "pushed_digest": "sha256:bb", "reason": "global.immutable_tags = true"}),
        )
    }

    fn info() -> RequestInfo {
        RequestInfo {
            method: Some("PUT".into()),
            path: Some("/v2/prod/api/manifests/v1.4.2".into()),
            request_id: Some("req-1".into()),
            client_address: Some("10.0.0.7:51234".into()),
            user_agent: Some("skopeo/1.9".into()),
        }
    }

    #[test]
    fn an_overwrite_record_carries_every_field() {
        let r = refusal_record(
            Mode::Enforce,
            Refusal::Overwrite,
            &overwrite(),
            Some("global.immutable_tags = true"),
            &info(),
        );
        assert_eq!(
            r,
            json!({
                "event": "immutable_tags.refusal", "mode": "enforce", "action": "refused", "kind": "overwrite",
                "status": 409, "code": "TAG_IMMUTABLE",
                "message": "Tag 'v1.4.2' is immutable and cannot be overwritten",
                "repository": "prod/api", "tag": "v1.4.2",
                "current_digest": "sha256:aa", "pushed_digest": "sha256:bb",
                "rule": "global.immutable_tags = true", "break_glass": null,
                "method": "PUT", "path": "/v2/prod/api/manifests/v1.4.2", "request_id": "req-1",
                "client_address": "10.0.0.7:51234", "user_agent": "skopeo/1.9",
            })
        );
        // One line: a log record must never span lines.
        assert!(!r.to_string().contains('\n'));
    }

    #[test]
    fn audit_mode_says_would_refuse_and_missing_fields_are_null() {
        let err = OciError::unclassifiable("NAME_INVALID", "bad", "/v2/A/manifests/x\ny");
        let r = refusal_record(Mode::Audit, Refusal::Invalid, &err, None, &RequestInfo::default());
        assert_eq!(r["action"], "would_refuse");
        assert_eq!(r["mode"], "audit");
        assert_eq!(r["kind"], "invalid_request");
        for k in [
            "repository",
            "tag",
            "current_digest",
            "pushed_digest",
            "rule",
            "break_glass",
            "method",
            "request_id",
            "client_address",
            "user_agent",
        ] {
            assert!(r[k].is_null(), "{k}");
        }
        assert!(!r.to_string().contains('\n'), "control characters are escaped");
    }

    #[test]
    fn a_refused_override_says_why() {
        let mut err = overwrite();
        err.detail["break_glass"] = json!("principal 'bob' is not in break_glass.principals");
        let r = refusal_record(Mode::Enforce, Refusal::Overwrite, &err, None, &info());
        assert_eq!(r["break_glass"], "principal 'bob' is not in break_glass.principals");
    }

    #[test]
    fn a_refused_digest_delete_names_every_tag() {
        let err = OciError::new(
            409,
            "TAG_IMMUTABLE",
            "the manifest is held by immutable tags",
            json!({"repository": "app", "tag": "a-scratch", "digest": "sha256:cc",
                   "tags": ["a-scratch", "v9"], "not_covered": ["a-scratch"]}),
        );
        let r = refusal_record(Mode::Enforce, Refusal::Delete, &err, None, &info());
        assert_eq!(r["digest"], "sha256:cc");
        assert_eq!(r["tags"], json!(["a-scratch", "v9"]), "a search for v9 finds it");
        assert_eq!(r["not_covered"], json!(["a-scratch"]));
        // Absent from the detail: absent from the record.
        let r = refusal_record(Mode::Enforce, Refusal::Overwrite, &overwrite(), None, &info());
        assert!(r.get("digest").is_none() && r.get("tags").is_none() && r.get("not_covered").is_none());
    }

    #[test]
    fn subject_reads_the_detail() {
        assert_eq!(subject(&overwrite()), Some(("prod/api", "v1.4.2")));
        assert_eq!(subject(&OciError::unclassifiable("NAME_INVALID", "bad", "/x")), None);
    }
}
