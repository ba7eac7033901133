//! Plugin configuration: parsed from the JSON Envoy passes (`StringValue`, Istio's
//! `pluginConfig`), validated, and compiled once. Any error names the field and the value, and
//! refuses the whole configuration: there is no half-working policy.

use crate::oci::request::{is_valid_name, DEFAULT_MAX_TAGS_PER_PUSH};
use crate::policy::exclusions::Exclusions;
use crate::policy::rules::{RawRule, Rules, DEFAULT_MAX_REGEX_LENGTH, MAX_REGEX_LENGTH_LIMIT};
use crate::policy::{Policy, Scope};
use crate::util::json_doc::{Fields, Json};
use crate::verdict::break_glass::BreakGlass;
use std::collections::BTreeMap;
use std::fmt;

#[derive(Debug, Clone)]
pub struct Config {
    pub upstream: Upstream,
    pub policy: Policy,
    pub error_code: String,
    pub cache: CacheSettings,
    pub deletes: DeleteSettings,
    pub mode: Mode,
    pub claims: ClaimSettings,
    pub on_upstream_error: OnUpstreamError,
    /// Rewrite reads of immutable tags the map knows to reads by digest (see `pull`).
    pub pin_immutable_pulls: bool,
    /// Largest manifest the filter buffers to hash; a larger push is refused with 413.
    pub max_manifest_bytes: usize,
    /// Most `?tag=` parameters one push may carry (each costs a lookup and a claim); past it
    /// the push is refused with 400.
    pub max_tags_per_push: usize,
    /// The break-glass exception (see `break_glass`); `None`: no override ever.
    pub break_glass: Option<BreakGlass>,
}

/// `enforce` refuses; `audit` evaluates everything the same way, logs and counts what it would
/// refuse, and lets it through (for a rollout: read the log for a week, then enforce).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    #[default]
    Enforce,
    Audit,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Audit => "audit",
        }
    }
}

/// Tag claims (see `claims`): in Envoy shared data, or in etcd when `etcd` is set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimSettings {
    /// How long a claim (and a committed record) lives; above the longest a push can take.
    /// With etcd also the TTL of each worker's lease.
    pub ttl_ms: u64,
    /// Number of shared-data slots the claims hash into: the memory bound.
    pub slots: u32,
    pub etcd: Option<EtcdSettings>,
}

/// `claims.etcd`: claims shared by every Envoy replica, in etcd (see `etcd`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdSettings {
    /// The Envoy cluster that reaches etcd's client port.
    pub cluster: String,
    /// `:authority` of the calls (default: the cluster name).
    pub authority: String,
    /// Every key the filter writes starts with it (so etcd's RBAC can confine the filter).
    pub prefix: String,
    /// Budget of one call, all its attempts together.
    pub timeout_ms: u64,
    /// Deadline of one attempt: a member that does not answer within it is left for another
    /// (`filter::claims::etcd::Call`).
    pub attempt_timeout_ms: u64,
}

/// What to do with a push to an immutable tag when the registry cannot tell its current digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnUpstreamError {
    /// Refuse with 503 (the default: nothing passes unchecked).
    Refuse,
    /// Let the push through unchecked (only when set explicitly).
    Allow,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub cluster: String,
    /// `:authority` of dispatched calls; `None`: the request's own.
    pub authority: Option<String>,
    pub timeout_ms: u64,
    /// Timeout of the manifest PUT the filter sends itself once it let a push through.
    pub write_timeout_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheSettings {
    pub max_entries: usize,
    pub ttl_seconds: u64,
}

/// Protection of deletes (`deletes` in the JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeleteSettings {
    /// Refuse deletes of immutable tags and of manifests an immutable tag points to.
    pub protect: bool,
    /// Above this many immutable tags in a repository, a delete by digest is refused unchecked.
    pub max_immutable_tags: usize,
    /// `n` of the `tags/list` pages the filter asks for; `None`: the registry's default.
    pub page_size: Option<u32>,
    /// `DELETE /v2/<name>/blobs/<digest>` (`deletes.blobs`).
    pub blobs: BlobDeletes,
}

/// What the filter does with a blob delete. A layer of an image behind an immutable tag, once
/// unlinked, makes that image unpullable; the registry's garbage collection removes blobs no
/// manifest references, so clients need no blob deletes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobDeletes {
    /// Refused everywhere (the default).
    Refuse,
    /// Let through in repositories no immutable rule can select (`Policy::may_protect_in`).
    Unprotected,
    /// Let through everywhere.
    Allow,
}

// ConfigError lives in json_doc (a leaf): the readers that return it (json_doc, rules,
// break_glass) are below config, which re-exports it so `config::ConfigError` stays its path.
pub use crate::util::json_doc::ConfigError;

/// The start of `refuse_lost_global_protection`'s reason.
const LOST_GLOBAL_PROTECTION: &str = "inherits ";

#[cfg(test)]
impl ConfigError {
    /// Whether this is `refuse_lost_global_protection`'s refusal (random policies skip it).
    pub fn is_lost_global_protection(&self) -> bool {
        self.field.starts_with("repository.")
            && self.field.ends_with(".immutable_tags")
            && self.reason.starts_with(LOST_GLOBAL_PROTECTION)
    }
}

fn err(field: impl Into<String>, value: impl fmt::Display, reason: impl Into<String>) -> ConfigError {
    ConfigError { field: field.into(), value: value.to_string(), reason: reason.into() }
}

fn quoted(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

#[derive(Default)]
struct RawConfig {
    upstream: RawUpstream,
    global: RawScope,
    repository: BTreeMap<String, RawScope>,
    error_code: Option<String>,
    cache: RawCache,
    protect_signature_tags: bool,
    mode: Option<String>,
    deletes: RawDeletes,
    /// Harbor/STACKIT/GitLab-style rule list (see rules.rs).
    rules: Vec<RawRule>,
    rules_max_regex_length: Option<usize>,
    claims: RawClaims,
    on_upstream_error: Option<OnUpstreamError>,
    pin_immutable_pulls: bool,
    max_manifest_bytes: Option<u64>,
    max_tags_per_push: Option<u64>,
    break_glass: Option<BreakGlass>,
}

#[derive(Default)]
struct RawDeletes {
    protect: Option<bool>,
    blobs: Option<String>,
    max_immutable_tags: Option<usize>,
    page_size: Option<u32>,
}

#[derive(Default)]
struct RawClaims {
    ttl_seconds: Option<u64>,
    slots: Option<u32>,
    etcd: Option<RawEtcd>,
}

#[derive(Default)]
struct RawEtcd {
    cluster: Option<String>,
    authority: Option<String>,
    prefix: Option<String>,
    timeout_ms: Option<u64>,
    attempt_timeout_ms: Option<u64>,
}

#[derive(Default)]
struct RawUpstream {
    cluster: Option<String>,
    authority: Option<String>,
    timeout_ms: Option<u64>,
    write_timeout_ms: Option<u64>,
}

#[derive(Default)]
struct RawScope {
    immutable_tags: Option<bool>,
    immutable_tags_exclusions: Vec<String>,
}

#[derive(Default)]
struct RawCache {
    max_entries: Option<usize>,
    ttl_seconds: Option<u64>,
}

pub const DEFAULT_ERROR_CODE: &str = "DENIED";

/// The largest `max_tags_per_push`: each tag is a HEAD (and an etcd call) in flight at once.
pub const MAX_TAGS_PER_PUSH_LIMIT: usize = 256;

/// 4 MiB, the shipped route's `request_body_buffer_limit`: the filter refuses a larger manifest
/// itself rather than rely on Envoy's 413, which does not come while headers are held.
pub const DEFAULT_MAX_MANIFEST_BYTES: u64 = 4 << 20;

impl Config {
    /// Whether an immutable tag's digest can change through the filter: a break-glass override,
    /// or a tag delete let through and the tag pushed anew. Then what a worker's map learned
    /// may be stale, and only vouches for a push as long as the claim records fence it.
    pub fn tags_can_change(&self) -> bool {
        self.break_glass.is_some() || !self.deletes.protect
    }

    /// Parses and validates a configuration. Empty input is the empty policy (every tag mutable).
    pub fn from_json(bytes: &[u8]) -> Result<Config, ConfigError> {
        let raw: RawConfig = if bytes.iter().all(u8::is_ascii_whitespace) {
            RawConfig::default()
        } else {
            RawConfig::read(&Json::parse(bytes)?)?
        };
        raw.validate()
    }

    pub fn summary(&self) -> String {
        let p = &self.policy;
        let scope = |s: &Scope| {
            format!(
                "immutable_tags={} exclusions={}",
                s.immutable_tags.map_or("unset".to_string(), |b| b.to_string()),
                s.exclusions.as_ref().map_or(0, |e| e.patterns().len())
            )
        };
        // Each scope as resolved (nested scopes inherit), with where each field is written.
        let from = |k: &str, origin: String| {
            if origin == format!("repository.\"{k}\"") {
                "here".to_string()
            } else {
                format!("from {origin}")
            }
        };
        let repos: Vec<String> = p
            .repositories
            .iter()
            .map(|(k, _)| {
                let o = p.origins(k);
                format!(
                    "{k}: immutable_tags={} ({}) exclusions={} ({})",
                    o.immutable_tags.map_or("unset".to_string(), |b| b.to_string()),
                    from(k, o.immutable_tags_from),
                    o.exclusions.map_or(0, |e| e.patterns().len()),
                    from(k, o.exclusions_from)
                )
            })
            .collect();
        let d = &self.deletes;
        format!(
            "mode={}; global: {}; repositories: [{}]; rules: {} enabled, {} disabled; protect_signature_tags={}; error_code={}; upstream cluster={} timeout_ms={}; cache max_entries={} ttl_seconds={}; deletes protect={} max_immutable_tags={} page_size={} blobs={:?}; claims ttl_seconds={} slots={} store={}; on_upstream_error={:?}; pin_immutable_pulls={}; max_manifest_bytes={}; max_tags_per_push={}",
            self.mode.as_str(),
            scope(&p.global),
            repos.join(", "),
            p.rules.enabled(),
            p.rules.disabled(),
            p.protect_signature_tags,
            self.error_code,
            self.upstream.cluster,
            self.upstream.timeout_ms,
            self.cache.max_entries,
            self.cache.ttl_seconds,
            d.protect,
            d.max_immutable_tags,
            d.page_size.map_or("registry default".to_string(), |n| n.to_string()),
            d.blobs,
            self.claims.ttl_ms / 1000,
            self.claims.slots,
            self.claims.etcd.as_ref().map_or("shared-data".to_string(), |e| format!("etcd cluster={} prefix={} timeout_ms={} attempt_timeout_ms={}", e.cluster, e.prefix, e.timeout_ms, e.attempt_timeout_ms)),
            self.on_upstream_error,
            self.pin_immutable_pulls,
            self.max_manifest_bytes,
            self.max_tags_per_push
        )
    }
}

fn usize_max() -> u64 {
    u64::try_from(usize::MAX).unwrap_or(u64::MAX)
}

/// Narrows a value `opt_uint` already bounded to the type's maximum.
fn narrow<T: TryFrom<u64>>(n: Option<u64>) -> Option<T> {
    n.and_then(|n| T::try_from(n).ok())
}

/// An object field that is its type's default when absent.
fn object<'a>(f: &Fields<'a>, name: &str, allowed: &[&str]) -> Result<Option<Fields<'a>>, ConfigError> {
    f.present(name).map(|v| v.fields(&f.at(name), allowed)).transpose()
}

impl RawConfig {
    fn read(doc: &Json) -> Result<RawConfig, ConfigError> {
        let f = doc.fields(
            "",
            &[
                "upstream",
                "global",
                "repository",
                "error_code",
                "cache",
                "protect_signature_tags",
                "mode",
                "deletes",
                "rules",
                "rules_max_regex_length",
                "claims",
                "on_upstream_error",
                "pin_immutable_pulls",
                "max_manifest_bytes",
                "max_tags_per_push",
                "break_glass",
            ],
        )?;
        let upstream =
            match object(&f, "upstream", &["cluster", "authority", "timeout_ms", "write_timeout_ms"])? {
                None => RawUpstream::default(),
                Some(u) => RawUpstream {
                    cluster: u.opt_string("cluster")?,
                    authority: u.opt_string("authority")?,
                    timeout_ms: u.opt_uint("timeout_ms", "u64", u64::MAX)?,
                    write_timeout_ms: u.opt_uint("write_timeout_ms", "u64", u64::MAX)?,
                },
            };
        let global = match f.present("global") {
            None => RawScope::default(),
            Some(v) => RawScope::read(v, "global")?,
        };
        let mut repository = BTreeMap::new();
        if let Some(v) = f.present("repository") {
            let Json::Object(entries) = v else {
                return Err(v.invalid_type("repository", "a map"));
            };
            // A repeated key is refused, as a repeated field is: keeping either value silently
            // could drop the protection the other one states.
            for (name, scope) in entries {
                let at = format!("repository.{name}");
                let scope = RawScope::read(scope, &at)?;
                if repository.insert(name.clone(), scope).is_some() {
                    return Err(err(at, "", format!("duplicate key `{name}`")));
                }
            }
        }
        let cache = match object(&f, "cache", &["max_entries", "ttl_seconds"])? {
            None => RawCache::default(),
            Some(c) => RawCache {
                max_entries: narrow(c.opt_uint("max_entries", "usize", usize_max())?),
                ttl_seconds: c.opt_uint("ttl_seconds", "u64", u64::MAX)?,
            },
        };
        let deletes = match object(&f, "deletes", &["protect", "max_immutable_tags", "page_size", "blobs"])? {
            None => RawDeletes::default(),
            Some(d) => RawDeletes {
                protect: d.opt_bool("protect")?,
                blobs: d.opt_string("blobs")?,
                max_immutable_tags: narrow(d.opt_uint("max_immutable_tags", "usize", usize_max())?),
                page_size: narrow(d.opt_uint("page_size", "u32", u32::MAX.into())?),
            },
        };
        let claims = match object(&f, "claims", &["ttl_seconds", "slots", "etcd"])? {
            None => RawClaims::default(),
            Some(c) => RawClaims {
                ttl_seconds: c.opt_uint("ttl_seconds", "u64", u64::MAX)?,
                slots: narrow(c.opt_uint("slots", "u32", u32::MAX.into())?),
                etcd: match object(
                    &c,
                    "etcd",
                    &["cluster", "authority", "prefix", "timeout_ms", "attempt_timeout_ms"],
                )? {
                    None => None,
                    Some(e) => Some(RawEtcd {
                        cluster: e.opt_string("cluster")?,
                        authority: e.opt_string("authority")?,
                        prefix: e.opt_string("prefix")?,
                        timeout_ms: e.opt_uint("timeout_ms", "u64", u64::MAX)?,
                        attempt_timeout_ms: e.opt_uint("attempt_timeout_ms", "u64", u64::MAX)?,
                    }),
                },
            },
        };
        let rules = match f.present("rules") {
            None => Vec::new(),
            Some(v) => RawRule::read_all(v, "rules")?,
        };
        let on_upstream_error = match f.get("on_upstream_error") {
            None => None,
            Some(Json::Str(s)) if s == "refuse" => Some(OnUpstreamError::Refuse),
            Some(Json::Str(s)) if s == "allow" => Some(OnUpstreamError::Allow),
            Some(Json::Str(s)) => {
                return Err(err(
                    "on_upstream_error",
                    "",
                    format!("unknown variant `{s}`, expected `refuse` or `allow`"),
                ))
            }
            Some(v) => return Err(v.invalid_type("on_upstream_error", "`refuse` or `allow`")),
        };
        Ok(RawConfig {
            upstream,
            global,
            repository,
            error_code: f.opt_string("error_code")?,
            cache,
            protect_signature_tags: f.bool_or_false("protect_signature_tags")?,
            mode: f.opt_string("mode")?,
            deletes,
            rules,
            rules_max_regex_length: narrow(f.opt_uint("rules_max_regex_length", "usize", usize_max())?),
            claims,
            on_upstream_error,
            pin_immutable_pulls: f.bool_or_false("pin_immutable_pulls")?,
            max_manifest_bytes: f.opt_uint("max_manifest_bytes", "u64", u64::MAX)?,
            max_tags_per_push: f.opt_uint("max_tags_per_push", "u64", u64::MAX)?,
            break_glass: f.present("break_glass").map(BreakGlass::read).transpose()?,
        })
    }

    fn validate(self) -> Result<Config, ConfigError> {
        let cluster = self.upstream.cluster.unwrap_or_else(|| "registry".into());
        if cluster.is_empty() {
            return Err(err("upstream.cluster", "\"\"", "must name an Envoy cluster"));
        }
        if let Some(a) = &self.upstream.authority {
            if a.is_empty() || a.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control()) {
                return Err(err("upstream.authority", quoted(a), "must be a host[:port]"));
            }
        }
        let timeout_ms = self.upstream.timeout_ms.unwrap_or(2000);
        if !(1..=60_000).contains(&timeout_ms) {
            return Err(err("upstream.timeout_ms", timeout_ms, "must be between 1 and 60000"));
        }
        let write_timeout_ms = self.upstream.write_timeout_ms.unwrap_or(30_000);
        if !(1..=300_000).contains(&write_timeout_ms) {
            return Err(err("upstream.write_timeout_ms", write_timeout_ms, "must be between 1 and 300000"));
        }
        let error_code = self.error_code.unwrap_or_else(|| DEFAULT_ERROR_CODE.into());
        if error_code.is_empty() || !error_code.bytes().all(|b| b.is_ascii_uppercase() || b == b'_') {
            return Err(err(
                "error_code",
                quoted(&error_code),
                "must be an OCI-style code of A-Z and _ (e.g. TAG_IMMUTABLE, DENIED, CONFLICT)",
            ));
        }
        let max_entries = self.cache.max_entries.unwrap_or(10_000);
        if !(1..=10_000_000).contains(&max_entries) {
            return Err(err("cache.max_entries", max_entries, "must be between 1 and 10000000"));
        }
        let ttl_seconds = self.cache.ttl_seconds.unwrap_or(60);
        if ttl_seconds > 86_400 {
            return Err(err(
                "cache.ttl_seconds",
                ttl_seconds,
                "must be at most 86400 (0 disables the cache)",
            ));
        }
        let max_immutable_tags = self.deletes.max_immutable_tags.unwrap_or(1000);
        if !(1..=100_000).contains(&max_immutable_tags) {
            return Err(err(
                "deletes.max_immutable_tags",
                max_immutable_tags,
                "must be between 1 and 100000",
            ));
        }
        if let Some(n) = self.deletes.page_size {
            if !(1..=10_000).contains(&n) {
                return Err(err(
                    "deletes.page_size",
                    n,
                    "must be between 1 and 10000 (omit it for the registry's default)",
                ));
            }
        }
        let blobs = match self.deletes.blobs.as_deref() {
            None | Some("refuse") => BlobDeletes::Refuse,
            Some("unprotected") => BlobDeletes::Unprotected,
            Some("allow") => BlobDeletes::Allow,
            Some(other) => {
                return Err(err(
                    "deletes.blobs",
                    quoted(other),
                    "must be \"refuse\" (the default), \"unprotected\" or \"allow\"",
                ))
            }
        };
        let deletes = DeleteSettings {
            protect: self.deletes.protect.unwrap_or(true),
            max_immutable_tags,
            page_size: self.deletes.page_size,
            blobs,
        };
        let mode = match self.mode.as_deref() {
            None | Some("enforce") => Mode::Enforce,
            Some("audit") => Mode::Audit,
            Some(other) => {
                return Err(err("mode", quoted(other), "must be \"enforce\" (the default) or \"audit\""))
            }
        };
        let claim_ttl = self.claims.ttl_seconds.unwrap_or(60);
        if !(1..=3600).contains(&claim_ttl) {
            return Err(err("claims.ttl_seconds", claim_ttl, "must be between 1 and 3600"));
        }
        let slots = self.claims.slots.unwrap_or(1024);
        if !(1..=16_384).contains(&slots) {
            return Err(err("claims.slots", slots, "must be between 1 and 16384"));
        }
        let etcd = self.claims.etcd.map(RawEtcd::validate).transpose()?;
        // A write must land while its claim lives: the claim is at most half a TTL old when the
        // PUT is sent (`filter::push`), and the registry stores it within the write timeout.
        if write_timeout_ms.saturating_mul(2) > claim_ttl * 1000 {
            let why = format!("must be at most half of claims.ttl_seconds ({claim_ttl} s), so that a write lands while its claim lives");
            return Err(err("upstream.write_timeout_ms", write_timeout_ms, why));
        }
        // A claim answer is trusted for half the TTL (`filter::claims::etcd`): a call's
        // timeout must leave room for the few calls of one claim within that.
        if let Some(e) = etcd.as_ref().filter(|e| e.timeout_ms.saturating_mul(4) > claim_ttl * 1000) {
            let why = format!("must be at most a quarter of claims.ttl_seconds ({claim_ttl} s), so a claim's answer is never older than the TTL");
            return Err(err("claims.etcd.timeout_ms", e.timeout_ms, why));
        }
        let max_manifest = self.max_manifest_bytes.unwrap_or(DEFAULT_MAX_MANIFEST_BYTES);
        let max_manifest_bytes = match usize::try_from(max_manifest) {
            Ok(n) if (1024..=64 << 20).contains(&n) => n,
            _ => {
                return Err(err(
                    "max_manifest_bytes",
                    max_manifest,
                    "must be between 1024 and 67108864 (64 MiB)",
                ))
            }
        };
        let max_tags = self.max_tags_per_push.unwrap_or(DEFAULT_MAX_TAGS_PER_PUSH as u64);
        let max_tags_per_push = match usize::try_from(max_tags) {
            Ok(n) if n <= MAX_TAGS_PER_PUSH_LIMIT => n,
            _ => {
                let why = format!("must be between 0 (no ?tag= at all) and {MAX_TAGS_PER_PUSH_LIMIT}");
                return Err(err("max_tags_per_push", max_tags, why));
            }
        };
        let global = compile_scope("global", self.global)?;
        let mut repositories = Vec::new();
        for (name, raw) in self.repository {
            if !is_valid_name(&name) {
                return Err(err(
                    format!("repository.{}", quoted(&name)),
                    quoted(&name),
                    "keys must be OCI repository names (lower-case, e.g. \"team/app\")",
                ));
            }
            let scope = compile_scope(&format!("repository.{}", quoted(&name)), raw)?;
            repositories.push((name, scope));
        }
        let max_regex = self.rules_max_regex_length.unwrap_or(DEFAULT_MAX_REGEX_LENGTH);
        if !(1..=MAX_REGEX_LENGTH_LIMIT).contains(&max_regex) {
            return Err(err(
                "rules_max_regex_length",
                max_regex,
                format!("must be between 1 and {MAX_REGEX_LENGTH_LIMIT}"),
            ));
        }
        let rules = Rules::compile(self.rules, max_regex)?;
        let policy = Policy::new(global, repositories, self.protect_signature_tags).with_rules(rules);
        refuse_lost_global_protection(&policy)?;
        Ok(Config {
            upstream: Upstream { cluster, authority: self.upstream.authority, timeout_ms, write_timeout_ms },
            policy,
            error_code,
            cache: CacheSettings { max_entries, ttl_seconds },
            deletes,
            mode,
            claims: ClaimSettings { ttl_ms: claim_ttl * 1000, slots, etcd },
            on_upstream_error: self.on_upstream_error.unwrap_or(OnUpstreamError::Refuse),
            pin_immutable_pulls: self.pin_immutable_pulls,
            max_manifest_bytes,
            max_tags_per_push,
            break_glass: self.break_glass,
        })
    }
}

/// Before nested scopes inherited from enclosing scopes, a scope that did not set
/// `immutable_tags` took `global`'s. A scope that took `true` so and now inherits `false` (or
/// unset) from an enclosing scope would silently protect less: refused, as the rules'
/// migration is (docs/policy.md "Scopes, exclusions and signatures"), naming the way to keep either meaning.
fn refuse_lost_global_protection(policy: &Policy) -> Result<(), ConfigError> {
    if policy.global.immutable_tags != Some(true) {
        return Ok(());
    }
    for (key, scope) in &policy.repositories {
        let now = policy.origins(key);
        if scope.immutable_tags.is_none() && now.immutable_tags != Some(true) {
            let value = now.immutable_tags.map_or("unset".to_string(), |v| v.to_string());
            return Err(err(
                format!("repository.{}.immutable_tags", quoted(key)),
                "(unset)",
                format!(
                    "{LOST_GLOBAL_PROTECTION}{value} from {}.immutable_tags, but global.immutable_tags = true applied here before \
                     scopes inherited from enclosing scopes: set \"immutable_tags\": true on this scope to keep it \
                     immutable, or \"immutable_tags\": false to accept the new meaning",
                    now.immutable_tags_from
                ),
            ));
        }
    }
    Ok(())
}

impl RawEtcd {
    fn validate(self) -> Result<EtcdSettings, ConfigError> {
        let cluster = match self.cluster {
            Some(c) if !c.is_empty() => c,
            Some(c) => return Err(err("claims.etcd.cluster", quoted(&c), "must name an Envoy cluster")),
            None => {
                return Err(err(
                    "claims.etcd.cluster",
                    "(absent)",
                    "is required: the Envoy cluster that reaches etcd",
                ))
            }
        };
        let authority = self.authority.unwrap_or_else(|| cluster.clone());
        if authority.is_empty() || authority.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        {
            return Err(err("claims.etcd.authority", quoted(&authority), "must be a host[:port]"));
        }
        let prefix = self.prefix.unwrap_or_else(|| "/immutable-tags/".into());
        if prefix.is_empty() {
            return Err(err(
                "claims.etcd.prefix",
                "\"\"",
                "must not be empty (it confines the filter's keys)",
            ));
        }
        let timeout_ms = self.timeout_ms.unwrap_or(1000);
        if !(1..=60_000).contains(&timeout_ms) {
            return Err(err("claims.etcd.timeout_ms", timeout_ms, "must be between 1 and 60000"));
        }
        // A quarter by default: a hung member costs one attempt (under 600 ms of a 2 s budget, the
        // issue's target), and three more fit the budget.
        let attempt_timeout_ms = self.attempt_timeout_ms.unwrap_or((timeout_ms / 4).max(1));
        if !(1..=timeout_ms).contains(&attempt_timeout_ms) {
            return Err(err(
                "claims.etcd.attempt_timeout_ms",
                attempt_timeout_ms,
                format!("must be between 1 and claims.etcd.timeout_ms ({timeout_ms})"),
            ));
        }
        Ok(EtcdSettings { cluster, authority, prefix, timeout_ms, attempt_timeout_ms })
    }
}

impl RawScope {
    fn read(v: &Json, at: &str) -> Result<RawScope, ConfigError> {
        let f = v.fields(at, &["immutable_tags", "immutable_tags_exclusions"])?;
        Ok(RawScope {
            immutable_tags: f.opt_bool("immutable_tags")?,
            immutable_tags_exclusions: f.strings_or_empty("immutable_tags_exclusions")?,
        })
    }
}

fn compile_scope(at: &str, raw: RawScope) -> Result<Scope, ConfigError> {
    let exclusions = if raw.immutable_tags_exclusions.is_empty() {
        None
    } else {
        let list = &raw.immutable_tags_exclusions;
        Some(Exclusions::compile(list).map_err(|(i, why)| {
            let value = list.get(i).map_or(String::new(), |p| quoted(p));
            err(
                format!("{at}.immutable_tags_exclusions[{i}]"),
                value,
                format!("invalid regular expression: {why}"),
            )
        })?)
    };
    Ok(Scope { immutable_tags: raw.immutable_tags, exclusions })
}

#[cfg(test)]
mod tests {
    use super::*;
    // The same tests run on wasm32 under wasm-bindgen-test (Node.js).
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn cfg(json: &str) -> Config {
        Config::from_json(json.as_bytes()).unwrap()
    }
    fn bad(json: &str) -> ConfigError {
        Config::from_json(json.as_bytes()).unwrap_err()
    }
    fn immutable(c: &Config, repo: &str, tag: &str) -> bool {
        c.policy.decide(repo, tag).immutable
    }

    #[test]
    fn defaults() {
        let c = cfg("");
        assert_eq!(
            c.upstream,
            Upstream {
                cluster: "registry".into(),
                authority: None,
                timeout_ms: 2000,
                write_timeout_ms: 30_000
            }
        );
        assert_eq!(c.error_code, "DENIED");
        assert_eq!(c.cache, CacheSettings { max_entries: 10_000, ttl_seconds: 60 });
        assert_eq!(c.claims, ClaimSettings { ttl_ms: 60_000, slots: 1024, etcd: None });
        assert_eq!(c.on_upstream_error, OnUpstreamError::Refuse, "refusing is the default");
        assert!(!immutable(&c, "app", "v1"), "nothing configured: every tag mutable");
        assert!(!cfg("{}").policy.may_protect_anything());
        assert!(!c.pin_immutable_pulls, "pinning is opt-in");
        assert_eq!(
            c.deletes,
            DeleteSettings {
                protect: true,
                max_immutable_tags: 1000,
                page_size: None,
                blobs: BlobDeletes::Refuse
            }
        );
    }

    #[test]
    fn delete_settings() {
        let c = cfg(r#"{"deletes": {"protect": false, "max_immutable_tags": 5, "page_size": 100}}"#);
        assert_eq!(
            c.deletes,
            DeleteSettings {
                protect: false,
                max_immutable_tags: 5,
                page_size: Some(100),
                blobs: BlobDeletes::Refuse
            }
        );
        for (v, want) in [
            ("refuse", BlobDeletes::Refuse),
            ("unprotected", BlobDeletes::Unprotected),
            ("allow", BlobDeletes::Allow),
        ] {
            assert_eq!(cfg(&format!(r#"{{"deletes": {{"blobs": "{v}"}}}}"#)).deletes.blobs, want);
        }
        let e = bad(r#"{"deletes": {"blobs": "yes"}}"#);
        assert_eq!((e.field.as_str(), e.value.as_str()), ("deletes.blobs", "\"yes\""));
        assert_eq!(bad(r#"{"deletes": {"blobs": true}}"#).field, "deletes.blobs");
        assert!(
            c.summary().contains("deletes protect=false max_immutable_tags=5 page_size=100"),
            "{}",
            c.summary()
        );
        let e = bad(r#"{"deletes": {"max_immutable_tags": 0}}"#);
        assert_eq!((e.field.as_str(), e.value.as_str()), ("deletes.max_immutable_tags", "0"));
        let e = bad(r#"{"deletes": {"page_size": 0}}"#);
        assert_eq!((e.field.as_str(), e.value.as_str()), ("deletes.page_size", "0"));
        assert_eq!(bad(r#"{"deletes": {"page_size": -1}}"#).field, "deletes.page_size");
        assert_eq!(bad(r#"{"deletes": {"protect": "yes"}}"#).field, "deletes.protect");
        assert_eq!(bad(r#"{"deletes": {"protec": true}}"#).field, "deletes.protec");
    }

    #[test]
    fn max_manifest_bytes_is_bounded() {
        assert_eq!(cfg("{}").max_manifest_bytes, 4 << 20);
        assert_eq!(cfg(r#"{"max_manifest_bytes": 8388608}"#).max_manifest_bytes, 8 << 20);
        for bad_value in ["0", "1023", "67108865", "-1", "\"big\""] {
            assert_eq!(
                bad(&format!(r#"{{"max_manifest_bytes": {bad_value}}}"#)).field,
                "max_manifest_bytes",
                "{bad_value}"
            );
        }
    }

    #[test]
    fn pin_immutable_pulls_is_a_boolean() {
        assert!(cfg(r#"{"pin_immutable_pulls": true}"#).pin_immutable_pulls);
        assert!(cfg(r#"{"pin_immutable_pulls": true}"#).summary().contains("pin_immutable_pulls=true"));
        let e = bad(r#"{"pin_immutable_pulls": "yes"}"#);
        assert_eq!(e.field, "pin_immutable_pulls");
    }

    #[test]
    fn the_issue_example() {
        let c = cfg(r#"{
          "upstream": {"cluster": "registry", "authority": "registry.example", "timeout_ms": 2000},
          "global": {"immutable_tags": true, "immutable_tags_exclusions": ["^latest$"]},
          "repository": {
            "dev": {"immutable_tags": false},
            "staging": {"immutable_tags": true, "immutable_tags_exclusions": ["^latest$", "^rc-.*$"]}
          },
          "error_code": "TAG_IMMUTABLE",
          "cache": {"max_entries": 10000, "ttl_seconds": 60}
        }"#);
        assert!(immutable(&c, "app", "v1"));
        assert!(!immutable(&c, "app", "latest"));
        assert!(!immutable(&c, "dev", "v1"));
        assert!(!immutable(&c, "dev/app/x", "v1"), "a key covers the repositories below it");
        assert!(immutable(&c, "devtools", "v1"), "prefix of a name is not a parent");
        assert!(!immutable(&c, "staging/api", "rc-1"));
        assert!(immutable(&c, "app", "rc-1"), "staging's list does not leak into global");
        assert_eq!(
            c.policy.decide("staging", "rc-2").reason,
            "repository.\"staging\".immutable_tags_exclusions matches \"^rc-.*$\""
        );
        assert_eq!(c.policy.decide("dev/x", "v1").reason, "repository.\"dev\".immutable_tags = false");
    }

    #[test]
    fn longest_key_wins_and_lists_replace_not_merge() {
        let c = cfg(r#"{
          "global": {"immutable_tags": true, "immutable_tags_exclusions": ["^latest$"]},
          "repository": {
            "team": {"immutable_tags": false},
            "team/prod": {"immutable_tags": true, "immutable_tags_exclusions": ["^dev-.*$"]},
            "other": {"immutable_tags_exclusions": ["^x$"]}
          }
        }"#);
        assert!(!immutable(&c, "team/app", "v1"));
        assert!(immutable(&c, "team/prod/api", "v1"));
        assert!(immutable(&c, "team/prod", "latest"), "replaced, not merged");
        assert!(!immutable(&c, "team/prod", "dev-1"));
        assert!(immutable(&c, "other", "v1"), "inherits global immutable_tags");
        assert!(!immutable(&c, "other", "x"));
        assert!(immutable(&c, "other", "latest"));
    }

    #[test]
    fn repository_can_enable_when_global_is_off() {
        let c = cfg(r#"{"repository": {"prod": {"immutable_tags": true}}}"#);
        assert!(immutable(&c, "prod/api", "v1"));
        assert!(!immutable(&c, "app", "v1"));
    }

    #[test]
    fn look_ahead_seed_example() {
        let c = cfg(
            r#"{"global": {"immutable_tags": true, "immutable_tags_exclusions": ["^(?!v[0-9]+\\.[0-9]+\\.[0-9]+$).*$"]}}"#,
        );
        assert!(immutable(&c, "app", "v1.2.3"));
        assert!(!immutable(&c, "app", "v1.2"));
        assert!(!immutable(&c, "app", "latest"));
    }

    #[test]
    fn signature_tags_mutable_unless_protected() {
        let sig = format!("sha256-{}.sig", "a".repeat(64));
        let plain = format!("sha256-{}", "0".repeat(64));
        let c = cfg(r#"{"global": {"immutable_tags": true}}"#);
        assert!(!immutable(&c, "app", &sig));
        assert!(!immutable(&c, "app", &plain));
        assert!(immutable(&c, "app", "sha256-abc"));
        let c = cfg(r#"{"global": {"immutable_tags": true}, "protect_signature_tags": true}"#);
        assert!(immutable(&c, "app", &sig));
    }

    #[test]
    fn errors_name_the_field_and_value() {
        let e = bad(r#"{"global": {"immutable_tags": "yes"}}"#);
        assert_eq!(e.field, "global.immutable_tags");
        assert!(e.to_string().contains("\"yes\""), "{e}");

        let e = bad(r#"{"global": {"immutable_tags_exclusions": ["^ok$", "(unclosed"]}}"#);
        assert_eq!(e.field, "global.immutable_tags_exclusions[1]");
        assert_eq!(e.value, "\"(unclosed\"");

        let e = bad(r#"{"repository": {"dev": {"immutable_tag": true}}}"#);
        assert_eq!(e.field, "repository.dev.immutable_tag");
        assert!(e.reason.contains("unknown field"), "{e}");

        let e = bad(r#"{"mode": "audit", "mode": "enforce"}"#);
        assert_eq!((e.field.as_str(), e.reason.as_str()), ("mode", "duplicate field `mode`"));
        let e = bad(r#"{"cache": {"max_entries": 1.5}}"#);
        assert_eq!(e.to_string(), "invalid configuration: field `cache.max_entries`: invalid type: floating point `1.5`, expected usize");
        let e = bad(r#"{"on_upstream_error": "deny"}"#);
        assert_eq!(e.reason, "unknown variant `deny`, expected `refuse` or `allow`");
        assert!(bad("{} x").reason.contains("trailing characters"), "nothing after the document");
        let e = bad(r#"{"globl": {}}"#);
        assert!(e.to_string().contains("globl"), "{e}");

        let e = bad(r#"{"repository": {"Dev": {}}}"#);
        assert_eq!(e.value, "\"Dev\"");

        assert_eq!(bad(r#"{"error_code": "nope"}"#).field, "error_code");
        assert_eq!(bad(r#"{"cache": {"max_entries": 0}}"#).field, "cache.max_entries");
        assert_eq!(bad(r#"{"upstream": {"timeout_ms": 0}}"#).field, "upstream.timeout_ms");
        assert_eq!(bad(r#"{"upstream": {"cluster": ""}}"#).field, "upstream.cluster");
        assert!(bad("{not json").to_string().contains("invalid configuration"));
        assert!(bad("[]").to_string().contains("invalid configuration"));
    }

    #[test]
    fn mode_is_enforce_unless_audit() {
        assert_eq!(cfg("{}").mode, Mode::Enforce);
        assert_eq!(cfg(r#"{"mode": "enforce"}"#).mode, Mode::Enforce);
        assert_eq!(cfg(r#"{"mode": "audit"}"#).mode, Mode::Audit);
        assert!(cfg(r#"{"mode": "audit"}"#).summary().starts_with("mode=audit; "));
        for m in ["\"Audit\"", "\"dry-run\"", "\"\""] {
            let e = bad(&format!(r#"{{"mode": {m}}}"#));
            assert_eq!((e.field.as_str(), e.value.as_str()), ("mode", m), "{e}");
        }
        assert_eq!(bad(r#"{"mode": true}"#).field, "mode");
    }

    #[test]
    fn max_tags_per_push() {
        assert_eq!(cfg("{}").max_tags_per_push, 16, "the default");
        assert_eq!(cfg(r#"{"max_tags_per_push": 0}"#).max_tags_per_push, 0);
        assert_eq!(cfg(r#"{"max_tags_per_push": 256}"#).max_tags_per_push, 256);
        for b in [
            r#"{"max_tags_per_push": 257}"#,
            r#"{"max_tags_per_push": -1}"#,
            r#"{"max_tags_per_push": "8"}"#,
            r#"{"max_tags_per_push": 1.5}"#,
        ] {
            let e = bad(b);
            assert_eq!(e.field, "max_tags_per_push", "{b}: {e}");
        }
        assert!(bad(r#"{"max_tags_per_push": 99999999999999999999}"#)
            .to_string()
            .contains("max_tags_per_push"));
    }

    #[test]
    fn claims_and_on_upstream_error() {
        let c = cfg(
            r#"{"upstream": {"write_timeout_ms": 2500}, "claims": {"ttl_seconds": 5, "slots": 8}, "on_upstream_error": "allow"}"#,
        );
        assert_eq!(c.claims, ClaimSettings { ttl_ms: 5_000, slots: 8, etcd: None });
        assert_eq!(c.on_upstream_error, OnUpstreamError::Allow);
        assert_eq!(cfg(r#"{"on_upstream_error": "refuse"}"#).on_upstream_error, OnUpstreamError::Refuse);
        let e = bad(r#"{"on_upstream_error": "ALLOW"}"#);
        assert_eq!(e.field, "on_upstream_error");
        assert!(e.reason.contains("unknown variant"), "{e}");
        assert_eq!(bad(r#"{"claims": {"ttl_seconds": 0}}"#).field, "claims.ttl_seconds");
        assert_eq!(bad(r#"{"claims": {"slots": 0}}"#).field, "claims.slots");
        assert_eq!(bad(r#"{"claims": {"slots": 100000}}"#).field, "claims.slots");
        assert_eq!(bad(r#"{"claims": {"ttl": 1}}"#).field, "claims.ttl");
    }

    #[test]
    fn upstream_authority_and_cache_ttl_bounds() {
        for a in ["", "a b", "reg\\u0001"] {
            let e = bad(&format!(r#"{{"upstream": {{"authority": "{a}"}}}}"#));
            assert_eq!(e.field, "upstream.authority", "{a:?}: {e}");
        }
        assert_eq!(
            cfg(r#"{"upstream": {"authority": "reg:5000"}}"#).upstream.authority.as_deref(),
            Some("reg:5000")
        );
        assert_eq!(
            cfg(r#"{"cache": {"ttl_seconds": 86400}}"#).cache.ttl_seconds,
            86_400,
            "the bound itself is allowed"
        );
        assert_eq!(bad(r#"{"cache": {"ttl_seconds": 86401}}"#).field, "cache.ttl_seconds");
    }

    #[test]
    fn claims_in_etcd() {
        let c = cfg(r#"{"claims": {"etcd": {"cluster": "etcd"}}}"#);
        let want = EtcdSettings {
            cluster: "etcd".into(),
            authority: "etcd".into(),
            prefix: "/immutable-tags/".into(),
            timeout_ms: 1000,
            attempt_timeout_ms: 250,
        };
        assert_eq!(c.claims.etcd, Some(want));
        let c = cfg(
            r#"{"claims": {"etcd": {"cluster": "e", "authority": "etcd:2379", "prefix": "/x/", "timeout_ms": 300}}}"#,
        );
        let want = EtcdSettings {
            cluster: "e".into(),
            authority: "etcd:2379".into(),
            prefix: "/x/".into(),
            timeout_ms: 300,
            attempt_timeout_ms: 75,
        };
        assert_eq!(c.claims.etcd, Some(want));
        for (json, field) in [
            (r#"{"claims": {"etcd": {}}}"#, "claims.etcd.cluster"),
            (r#"{"claims": {"etcd": {"cluster": ""}}}"#, "claims.etcd.cluster"),
            (r#"{"claims": {"etcd": {"cluster": "e", "endpoints": []}}}"#, "claims.etcd.endpoints"),
            (r#"{"claims": {"etcd": {"cluster": "e", "timeout_ms": 0}}}"#, "claims.etcd.timeout_ms"),
            (
                r#"{"claims": {"etcd": {"cluster": "e", "attempt_timeout_ms": 0}}}"#,
                "claims.etcd.attempt_timeout_ms",
            ),
            (
                r#"{"claims": {"etcd": {"cluster": "e", "timeout_ms": 900, "attempt_timeout_ms": 901}}}"#,
                "claims.etcd.attempt_timeout_ms",
            ),
            (r#"{"claims": {"etcd": {"cluster": "e", "prefix": ""}}}"#, "claims.etcd.prefix"),
            (r#"{"claims": {"etcd": {"cluster": "e", "authority": "a b"}}}"#, "claims.etcd.authority"),
            (r#"{"claims": {"etcd": "etcd"}}"#, "claims.etcd"),
        ] {
            assert_eq!(bad(json).field, field, "{json}");
        }
    }
}

/// Attack review of the policy language (F4, F6).
#[cfg(test)]
mod policy_review_tests {
    use super::*;
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn a_scope_that_would_silently_lose_global_protection_by_inheriting_is_refused() {
        // Before scopes inherited from enclosing scopes, dev/release took global's `true`.
        let e = Config::from_json(
            br#"{"global": {"immutable_tags": true},
                 "repository": {"dev": {"immutable_tags": false},
                                "dev/release": {"immutable_tags_exclusions": ["^latest$"]}}}"#,
        )
        .unwrap_err();
        assert_eq!(
            (e.field.as_str(), e.value.as_str()),
            ("repository.\"dev/release\".immutable_tags", "(unset)")
        );
        assert!(e.reason.contains("inherits false from repository.\"dev\".immutable_tags"), "{e}");
        assert!(e.reason.contains("set \"immutable_tags\": true on this scope to keep it immutable"), "{e}");
        // Deeper, and with global's `true` reached through an unset middle scope.
        assert!(Config::from_json(
            br#"{"global": {"immutable_tags": true}, "repository": {"a": {"immutable_tags": false}, "a/b": {"immutable_tags_exclusions": ["x"]}, "a/b/c": {"immutable_tags_exclusions": ["y"]}}}"#
        )
        .is_err());
        // Stated explicitly, either way, it loads.
        for v in ["true", "false"] {
            let c = Config::from_json(
                format!(r#"{{"global": {{"immutable_tags": true}}, "repository": {{"dev": {{"immutable_tags": false}},
                    "dev/release": {{"immutable_tags": {v}, "immutable_tags_exclusions": ["^latest$"]}}}}}}"#)
                .as_bytes(),
            )
            .unwrap();
            assert_eq!(c.policy.decide("dev/release/app", "v1.0.0").immutable, v == "true");
        }
        // Inheriting what global gave, or more protection than before: loads.
        for ok in [
            r#"{"global": {"immutable_tags": true}, "repository": {"dev": {"immutable_tags_exclusions": ["x"]}, "dev/a": {"immutable_tags_exclusions": ["y"]}}}"#,
            r#"{"global": {"immutable_tags": false}, "repository": {"dev": {"immutable_tags": true}, "dev/a": {"immutable_tags_exclusions": ["y"]}}}"#,
            r#"{"repository": {"dev": {"immutable_tags": false}, "dev/a": {"immutable_tags_exclusions": ["y"]}}}"#,
        ] {
            assert!(Config::from_json(ok.as_bytes()).is_ok(), "{ok}");
        }
    }

    #[test]
    fn a_repeated_repository_key_is_refused() {
        let e = Config::from_json(
            br#"{"repository": {"prod": {"immutable_tags": true}, "prod": {"immutable_tags_exclusions": ["^latest$"]}}}"#,
        )
        .unwrap_err();
        assert_eq!((e.field.as_str(), e.reason.as_str()), ("repository.prod", "duplicate key `prod`"));
    }
}
