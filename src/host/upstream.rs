//! Calls the filter dispatches to the registry cluster.
use crate::config::Upstream;
use proxy_wasm::hostcalls;
use std::time::Duration;

/// Every manifest media type, so the registry answers for the manifest as stored rather than a
/// converted one (or a 404).
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.v2+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.docker.distribution.manifest.v1+prettyjws, \
application/vnd.docker.distribution.manifest.v1+json";

/// Dispatches `HEAD /v2/<repository>/manifests/<tag>` with the client's credentials.
/// `repository` and `tag` are already validated against the OCI grammar: no escaping needed.
pub fn head_manifest(
    upstream: &Upstream,
    request_authority: Option<&str>,
    authorization: Option<&str>,
    repository: &str,
    tag: &str,
) -> Result<u32, String> {
    let path = format!("/v2/{repository}/manifests/{tag}");
    dispatch(upstream, "HEAD", &path, MANIFEST_ACCEPT, request_authority, authorization)
}

/// Dispatches `GET <path>` for a `tags/list` page (built or checked by `crate::deletes`) with the
/// client's credentials.
pub fn get_tags_list(
    upstream: &Upstream,
    request_authority: Option<&str>,
    authorization: Option<&str>,
    path: &str,
) -> Result<u32, String> {
    dispatch(upstream, "GET", path, "application/json", request_authority, authorization)
}

fn dispatch(
    upstream: &Upstream,
    method: &str,
    path: &str,
    accept: &str,
    request_authority: Option<&str>,
    authorization: Option<&str>,
) -> Result<u32, String> {
    let authority = upstream
        .authority
        .as_deref()
        .or(request_authority)
        .ok_or_else(|| format!("the request has no :authority to send the {method} with"))?;
    let mut headers = vec![
        (":method", method),
        (":path", path),
        (":authority", authority),
        ("accept", accept),
        ("user-agent", "immutable-tags"),
    ];
    if let Some(a) = authorization {
        headers.push(("authorization", a));
    }
    hostcalls::dispatch_http_call(
        &upstream.cluster,
        headers,
        None,
        vec![],
        Duration::from_millis(upstream.timeout_ms),
    )
    .map_err(|s| format!("cannot dispatch {method} to cluster '{}' ({s:?})", upstream.cluster))
}
