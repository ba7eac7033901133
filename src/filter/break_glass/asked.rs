//! What a request brings to break-glass, read at its headers ([`Asked`]: the principal its
//! credentials or Envoy's jwt_authn name, the reason header, the request id), and the JSON log
//! line break-glass records are written with. A leaf: the grant flow (`mod.rs`) and the windows
//! (`window.rs`) both use it.

use crate::filter::host::Host;
use crate::filter::worker::Worker;
use crate::verdict::break_glass::principal;
use serde_json::{Map, Value};

/// What a request brings, read at its headers.
#[derive(Debug, Clone, Default)]
pub struct Asked {
    pub principal: Option<String>,
    /// `principal` is the `sub` Envoy's jwt_authn verified (`break_glass.jwt_authn_payload`).
    pub verified: bool,
    pub reason: Option<String>,
    pub request_id: Option<String>,
}

impl Asked {
    pub fn read(worker: &Worker, header: &dyn Fn(&str) -> Option<String>) -> Asked {
        let Some(bg) = &worker.config.break_glass else { return Asked::default() };
        Asked {
            principal: header("authorization").and_then(|a| principal(&a)),
            verified: false,
            reason: header(&bg.reason_header),
            request_id: header("x-request-id"),
        }
    }

    /// With `break_glass.jwt_authn_payload`: the `sub` in the payload Envoy's jwt_authn put in
    /// the dynamic metadata (only after verifying the token) is the principal, proven by Envoy.
    /// Nothing there (no token, or one it refused with `allow_missing_or_failed`), or a read
    /// that fails: the credentials' claim stands, to be proven by the registry.
    pub fn verify(mut self, host: &dyn Host, worker: &Worker) -> Asked {
        let Some(key) = worker.config.break_glass.as_ref().and_then(|b| b.jwt_authn_payload.as_deref())
        else {
            return self;
        };
        if let Some(sub) = host
            .property(&["metadata", "filter_metadata", "envoy.filters.http.jwt_authn", key, "sub"])
            .filter(|s| !s.is_empty())
        {
            (self.principal, self.verified) = (Some(sub), true);
        }
        self
    }
}

/// One JSON log line from string fields (one code path rather than a `json!` per record).
pub(super) fn line(fields: &[(&str, Option<&str>)]) -> String {
    Value::Object(object(fields)).to_string()
}

pub(super) fn object(fields: &[(&str, Option<&str>)]) -> Map<String, Value> {
    let mut map = Map::new();
    for (k, v) in fields {
        map.insert(k.to_string(), v.map_or(Value::Null, Value::from));
    }
    map
}
