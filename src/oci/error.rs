//! OCI distribution-spec error responses: the status and JSON body the filter answers with
//! when it refuses a request itself.

use serde_json::{json, Value};

/// A refusal the filter answers with locally, in the OCI error format registry clients print.
#[derive(Debug, Clone, PartialEq)]
pub struct OciError {
    pub status: u16,
    pub code: String,
    pub message: String,
    pub detail: Value,
}

impl OciError {
    pub fn new(status: u16, code: &str, message: impl Into<String>, detail: Value) -> Self {
        OciError { status, code: code.to_string(), message: message.into(), detail }
    }

    /// A request the filter cannot classify with certainty: refused, never passed on.
    pub fn unclassifiable(code: &str, message: impl Into<String>, path: &str) -> Self {
        Self::new(400, code, message, json!({ "path": path }))
    }

    /// The upstream could not tell us the tag's current digest: refuse rather than guess.
    pub fn upstream(repository: &str, tag: &str, reason: &str) -> Self {
        Self::new(
            503,
            "UNAVAILABLE",
            format!("Cannot verify that tag '{tag}' may be written: {reason}"),
            json!({ "repository": repository, "tag": tag, "reason": reason }),
        )
    }

    /// `{"errors":[{"code":..,"message":..,"detail":..}]}`
    pub fn body(&self) -> String {
        json!({ "errors": [{ "code": self.code, "message": self.message, "detail": self.detail }] })
            .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    // The same tests run on wasm32 under wasm-bindgen-test (Node.js).
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn body_is_the_oci_error_envelope() {
        let e = OciError::new(409, "TAG_IMMUTABLE", "no", json!({"tag": "v1"}));
        let v: Value = serde_json::from_str(&e.body()).unwrap();
        assert_eq!(v["errors"][0]["code"], "TAG_IMMUTABLE");
        assert_eq!(v["errors"][0]["message"], "no");
        assert_eq!(v["errors"][0]["detail"]["tag"], "v1");
        assert_eq!(v["errors"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn upstream_refusal_is_503_and_says_why() {
        let e = OciError::upstream("app", "v1", "HEAD timed out");
        assert_eq!(e.status, 503);
        assert!(e.body().contains("HEAD timed out"));
    }
}
