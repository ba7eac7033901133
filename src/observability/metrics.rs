//! The filter's counters: their names (one prefix, listed in docs/observability.md) and which counter a
//! refusal moves. The filter
//! ([`Worker::count`](crate::filter::worker::Worker::count)) moves them through the `Host` trait;
//! the glue (`proxy_wasm`, wasm only) defines them in Envoy.

/// Every counter the filter keeps. Envoy puts custom wasm stats in its `wasmcustom` namespace:
/// `wasmcustom.immutable_tags.<name>` at `/stats`, `immutable_tags_<name>` at `/stats/prometheus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    /// Every request the filter ran on (the routes in envoy.yaml keep blob traffic away).
    RequestsSeen,
    /// Manifest writes (PUT, DELETE, or unreadable) the filter judged.
    RequestsChecked,
    /// Tags pushed that the policy leaves mutable.
    PushesMutable,
    /// Immutable tags pushed for the first time.
    PushesAllowedNewTag,
    /// Immutable tags re-pushed with the digest they already have.
    PushesAllowedSameDigest,
    OverwritesRefused,
    DeletesRefused,
    /// Manifest writes the filter cannot read with certainty (400).
    InvalidRequestsRefused,
    /// The registry could not tell the current digest (unreachable, timeout, 5xx, garbage): 503.
    UpstreamErrors,
    /// The registry answered the filter's HEAD with 401/403, passed on to the client.
    Unauthorized,
    /// The filter could not judge for a reason of its own (no configuration, unreadable body).
    InternalErrors,
    HeadCallsDispatched,
    MapHits,
    MapMisses,
    /// Refusals let through because `"mode": "audit"`.
    AuditWouldRefuse,
    /// Overwrites and deletes let through by break-glass that the registry accepted.
    BreakGlassOverrides,
    /// Streams under judgement that ended before their answer passed the filter (client gone),
    /// whose state the root's timer dropped.
    StreamsSwept,
    /// Tag claims taken for writes, and settled (committed or released): their difference is
    /// the claims in flight (in etcd: keys held by writes not yet answered).
    ClaimsTaken,
    ClaimsSettled,
    /// etcd calls (claims, commits, windows, leases) sent again after a failed attempt, and
    /// calls answered only after such a retry (a member failed and another answered).
    EtcdAttemptsRetried,
    EtcdFailovers,
    /// Failed etcd attempts by cause: no answer within `attempt_timeout_ms`; Envoy's own 503
    /// (connect failure, no healthy member); reset; etcd's retryable errors (no leader, leader
    /// changed, too many requests: the gateway's 503/429/504).
    EtcdAttemptTimeouts,
    EtcdAttemptsRefused,
    EtcdAttemptResets,
    EtcdAttemptsUnavailable,
    /// Calls that failed for good (every attempt, or the budget, spent; or a plain error).
    EtcdCallsFailed,
    /// Writes whose client left while the registry had them, and those answered since: their
    /// difference is the writes waiting on the root (bounded by `MAX_ORPHANS` per worker).
    WritesOrphaned,
    OrphansSettled,
}

pub const PREFIX: &str = "immutable_tags.";

impl Counter {
    pub const ALL: [Counter; 28] = [
        Counter::RequestsSeen,
        Counter::RequestsChecked,
        Counter::PushesMutable,
        Counter::PushesAllowedNewTag,
        Counter::PushesAllowedSameDigest,
        Counter::OverwritesRefused,
        Counter::DeletesRefused,
        Counter::InvalidRequestsRefused,
        Counter::UpstreamErrors,
        Counter::Unauthorized,
        Counter::InternalErrors,
        Counter::HeadCallsDispatched,
        Counter::MapHits,
        Counter::MapMisses,
        Counter::AuditWouldRefuse,
        Counter::BreakGlassOverrides,
        Counter::StreamsSwept,
        Counter::ClaimsTaken,
        Counter::ClaimsSettled,
        Counter::EtcdAttemptsRetried,
        Counter::EtcdFailovers,
        Counter::EtcdAttemptTimeouts,
        Counter::EtcdAttemptsRefused,
        Counter::EtcdAttemptResets,
        Counter::EtcdAttemptsUnavailable,
        Counter::EtcdCallsFailed,
        Counter::WritesOrphaned,
        Counter::OrphansSettled,
    ];

    /// The name without the prefix.
    pub fn short_name(self) -> &'static str {
        match self {
            Counter::RequestsSeen => "requests_seen",
            Counter::RequestsChecked => "requests_checked",
            Counter::PushesMutable => "pushes_mutable_tag",
            Counter::PushesAllowedNewTag => "pushes_allowed_new_tag",
            Counter::PushesAllowedSameDigest => "pushes_allowed_same_digest",
            Counter::OverwritesRefused => "overwrites_refused",
            Counter::DeletesRefused => "deletes_refused",
            Counter::InvalidRequestsRefused => "invalid_requests_refused",
            Counter::UpstreamErrors => "upstream_errors",
            Counter::Unauthorized => "unauthorized",
            Counter::InternalErrors => "internal_errors",
            Counter::HeadCallsDispatched => "head_calls_dispatched",
            Counter::MapHits => "map_hits",
            Counter::MapMisses => "map_misses",
            Counter::AuditWouldRefuse => "audit_would_refuse",
            Counter::BreakGlassOverrides => "break_glass_overrides",
            Counter::StreamsSwept => "streams_swept",
            Counter::ClaimsTaken => "claims_taken",
            Counter::ClaimsSettled => "claims_settled",
            Counter::EtcdAttemptsRetried => "etcd_attempts_retried",
            Counter::EtcdFailovers => "etcd_failovers",
            Counter::EtcdAttemptTimeouts => "etcd_attempt_timeouts",
            Counter::EtcdAttemptsRefused => "etcd_attempts_refused",
            Counter::EtcdAttemptResets => "etcd_attempt_resets",
            Counter::EtcdAttemptsUnavailable => "etcd_attempts_unavailable",
            Counter::EtcdCallsFailed => "etcd_calls_failed",
            Counter::WritesOrphaned => "writes_orphaned",
            Counter::OrphansSettled => "orphans_settled",
        }
    }

    pub fn name(self) -> String {
        format!("{PREFIX}{}", self.short_name())
    }

    /// Position in `ALL`, where the host keeps the metric ids.
    pub fn index(self) -> usize {
        Counter::ALL.iter().position(|c| *c == self).unwrap_or(0)
    }
}

/// Why a request was refused: picks the counter and is logged as `kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Overwrite,
    Delete,
    Invalid,
    Upstream,
    Unauthorized,
    Internal,
}

impl Refusal {
    /// Reads the kind from the request method and the refusal's status and code, so every
    /// caller of the single refusal path is counted without saying so: 400 is an unreadable
    /// request, 401/403 the registry's own answer, 503/UNAVAILABLE the registry's trouble, other
    /// 5xx the filter's; anything else refuses a DELETE (delete protection) or a PUT (overwrite).
    pub fn of(method: &str, status: u16, code: &str) -> Refusal {
        match status {
            400 => Refusal::Invalid,
            401 | 403 => Refusal::Unauthorized,
            429 => Refusal::Upstream,
            _ if status == 503 || code == "UNAVAILABLE" => Refusal::Upstream,
            500..=599 => Refusal::Internal,
            _ if method.eq_ignore_ascii_case("DELETE") => Refusal::Delete,
            _ => Refusal::Overwrite,
        }
    }

    pub fn counter(self) -> Counter {
        match self {
            Refusal::Overwrite => Counter::OverwritesRefused,
            Refusal::Delete => Counter::DeletesRefused,
            Refusal::Invalid => Counter::InvalidRequestsRefused,
            Refusal::Upstream => Counter::UpstreamErrors,
            Refusal::Unauthorized => Counter::Unauthorized,
            Refusal::Internal => Counter::InternalErrors,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Overwrite => "overwrite",
            Refusal::Delete => "delete",
            Refusal::Invalid => "invalid_request",
            Refusal::Upstream => "upstream_error",
            Refusal::Unauthorized => "unauthorized",
            Refusal::Internal => "internal_error",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    // The same tests run on wasm32 under wasm-bindgen-test (Node.js).
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn names_are_unique_prefixed_and_stat_safe() {
        let names: Vec<String> = Counter::ALL.iter().map(|c| c.name()).collect();
        for (i, n) in names.iter().enumerate() {
            assert!(n.starts_with("immutable_tags."), "{n}");
            assert!(n.bytes().all(|b| b.is_ascii_lowercase() || b == b'_' || b == b'.'), "{n}");
            assert!(!names[..i].contains(n), "duplicate {n}");
            assert_eq!(Counter::ALL[Counter::ALL[i].index()], Counter::ALL[i]);
        }
        assert_eq!(Counter::OverwritesRefused.name(), "immutable_tags.overwrites_refused");
    }

    #[test]
    fn refusals_pick_their_counter() {
        assert_eq!(Refusal::of("PUT", 409, "TAG_IMMUTABLE"), Refusal::Overwrite);
        assert_eq!(Refusal::of("PUT", 409, "DENIED"), Refusal::Overwrite);
        assert_eq!(Refusal::of("delete", 409, "TAG_IMMUTABLE"), Refusal::Delete);
        assert_eq!(Refusal::of("DELETE", 405, "UNSUPPORTED"), Refusal::Delete);
        assert_eq!(Refusal::of("DELETE", 400, "NAME_INVALID"), Refusal::Invalid);
        assert_eq!(Refusal::of("PUT", 400, "MANIFEST_INVALID"), Refusal::Invalid);
        assert_eq!(Refusal::of("PUT", 503, "UNAVAILABLE"), Refusal::Upstream);
        assert_eq!(Refusal::of("DELETE", 503, "UNAVAILABLE"), Refusal::Upstream);
        // Either sign is enough: a 503 of any code, or an UNAVAILABLE under another status.
        assert_eq!(Refusal::of("PUT", 503, "UNKNOWN"), Refusal::Upstream);
        assert_eq!(Refusal::of("PUT", 500, "UNAVAILABLE"), Refusal::Upstream);
        assert_eq!(Refusal::of("PUT", 401, "UNAUTHORIZED"), Refusal::Unauthorized);
        assert_eq!(Refusal::of("PUT", 403, "DENIED"), Refusal::Unauthorized);
        assert_eq!(Refusal::of("PUT", 500, "MANIFEST_INVALID"), Refusal::Internal);
        assert_eq!(Refusal::Delete.counter(), Counter::DeletesRefused);
        assert_eq!(Refusal::Upstream.as_str(), "upstream_error");
    }
}
