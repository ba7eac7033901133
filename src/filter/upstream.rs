//! The calls the filter dispatches to the registry cluster: HEADs and `tags/list` pages to
//! learn what tags hold, and the manifest PUT of a push it let through.
use super::host::Host;
use crate::config::Upstream;

/// Every manifest media type, so the registry answers for the manifest as stored rather than a
/// converted one (or a 404).
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.v2+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.docker.distribution.manifest.v1+prettyjws, \
application/vnd.docker.distribution.manifest.v1+json";

/// The client's `:authority` and credentials, read in the headers phase for the calls sent later.
#[derive(Debug, Clone, Default)]
pub struct Caller {
    pub authority: Option<String>,
    pub authorization: Option<String>,
}

impl Caller {
    pub fn of(host: &dyn Host) -> Caller {
        Caller {
            authority: host.request_header(":authority"),
            authorization: host.request_header("authorization"),
        }
    }
}

/// Whether the answer to a dispatched call is the registry's own, not one Envoy made up.
/// Envoy's router stamps `x-envoy-upstream-service-time` on every answer that came from the
/// upstream to a complete request (the async client's router never suppresses Envoy's
/// headers), and on none of its own local answers: circuit-breaker overflow, no healthy host,
/// connection failure or reset before headers, the 504 of a timeout. Those an attacker can
/// provoke (e.g. by filling the cluster's circuit breakers), so `on_upstream_error = allow`
/// must not read them as "the registry is unavailable". Should the header ever be missing
/// from a real answer, the push is refused: the safe side.
///
/// Only a `5xx` of the registry's own says it is unavailable: a `4xx` (429 of the client's own
/// pull quota, 400, 412, ...) is the registry's word about this request, which an attacker can
/// provoke at will, so it never opens `allow`.
pub fn from_registry(host: &dyn Host) -> bool {
    let server_error = host
        .call_response_header(":status")
        .and_then(|s| s.trim().parse::<u16>().ok())
        .is_some_and(|c| (500..600).contains(&c));
    server_error && host.call_response_header("x-envoy-upstream-service-time").is_some()
}

fn authority<'a>(upstream: &'a Upstream, caller: &'a Caller, method: &str) -> Result<&'a str, String> {
    upstream
        .authority
        .as_deref()
        .or(caller.authority.as_deref())
        .ok_or_else(|| format!("the request has no :authority to send the {method} with"))
}

fn dispatch_error(upstream: &Upstream, method: &str, why: &str) -> String {
    format!("cannot dispatch {method} to cluster '{}' ({why})", upstream.cluster)
}

/// Dispatches `HEAD /v2/<repository>/manifests/<tag>` with the client's credentials.
/// `repository` and `tag` are already validated against the OCI grammar: no escaping needed.
pub fn head_manifest(
    host: &dyn Host,
    upstream: &Upstream,
    caller: &Caller,
    repository: &str,
    tag: &str,
) -> Result<u32, String> {
    let path = format!("/v2/{repository}/manifests/{tag}");
    read(host, upstream, caller, "HEAD", &path, MANIFEST_ACCEPT)
}

/// Dispatches `GET /v2/<repository>/manifests/<tag>` (same Accept and credentials as the HEAD):
/// for a registry whose HEAD carries no digest, the digest is the hash of this body.
pub fn get_manifest(
    host: &dyn Host,
    upstream: &Upstream,
    caller: &Caller,
    repository: &str,
    tag: &str,
) -> Result<u32, String> {
    let path = format!("/v2/{repository}/manifests/{tag}");
    read(host, upstream, caller, "GET", &path, MANIFEST_ACCEPT)
}

/// Dispatches `GET <path>` for a `tags/list` page with the client's credentials.
pub fn get_tags_list(
    host: &dyn Host,
    upstream: &Upstream,
    caller: &Caller,
    path: &str,
) -> Result<u32, String> {
    read(host, upstream, caller, "GET", path, "application/json")
}

fn read(
    host: &dyn Host,
    upstream: &Upstream,
    caller: &Caller,
    method: &str,
    path: &str,
    accept: &str,
) -> Result<u32, String> {
    let authority = authority(upstream, caller, method)?;
    let mut headers = vec![
        (":method", method),
        (":path", path),
        (":authority", authority),
        ("accept", accept),
        ("user-agent", "immutable-tags"),
    ];
    if let Some(a) = &caller.authorization {
        headers.push(("authorization", a));
    }
    host.dispatch(&upstream.cluster, &headers, None, upstream.timeout_ms)
        .map_err(|why| dispatch_error(upstream, method, &why))
}

/// Request headers a relayed PUT must not copy: the pseudo-headers it sets itself, and what
/// belongs to the client's connection or framing (Envoy frames the call's body itself).
fn hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        ":method"
            | ":path"
            | ":authority"
            | ":scheme"
            | ":protocol"
            | "host"
            | "content-length"
            | "transfer-encoding"
            | "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "upgrade"
            | "expect"
    )
}

/// Dispatches the manifest PUT of a push the filter let through: the client's own method,
/// path and headers, with exactly the body the filter judged.
pub fn put_manifest(
    host: &dyn Host,
    upstream: &Upstream,
    caller: &Caller,
    path: &str,
    client_headers: &[(String, String)],
    body: &[u8],
) -> Result<u32, String> {
    let authority = authority(upstream, caller, "PUT")?;
    let mut headers: Vec<(&str, &str)> = vec![(":method", "PUT"), (":path", path), (":authority", authority)];
    headers
        .extend(client_headers.iter().filter(|(k, _)| !hop_by_hop(k)).map(|(k, v)| (k.as_str(), v.as_str())));
    host.dispatch(&upstream.cluster, &headers, Some(body), upstream.write_timeout_ms)
        .map_err(|why| dispatch_error(upstream, "PUT", &why))
}

/// Response headers a relayed answer must not copy: framing and what Envoy sets on every reply.
pub fn relayed_response_header(name: &str) -> bool {
    !name.starts_with(':')
        && !matches!(
            name,
            "content-length"
                | "transfer-encoding"
                | "connection"
                | "keep-alive"
                | "proxy-connection"
                | "te"
                | "trailer"
                | "upgrade"
                | "date"
                | "server"
        )
}
