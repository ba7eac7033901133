//! Break-glass: a narrow, accountable exception to a refused overwrite or delete. Pure: who a
//! request's credentials name, whether the configured exception applies, and why not.
//!
//! The name read here is only a claim. It counts as proven because the filter hands the same
//! credentials to the registry and counts the override only once the registry accepted the
//! write, and only when the registry demands authentication (an anonymous `GET /v2/` answered
//! 401, `registry_auth` below): against a registry without auth any name is unproven.

use crate::policy::exclusions::{Exclusions, Match};
use crate::policy::glob;
use crate::util::base64::decode;
use crate::util::json_doc::ConfigError;
use crate::util::json_doc::{Fields, Json};

pub const DEFAULT_REASON_HEADER: &str = "x-break-glass-reason";
/// The longest reason taken (bytes): enough for a ticket and a sentence, not for a log flood.
pub const DEFAULT_MAX_REASON_BYTES: usize = 256;
/// The largest `max_reason_bytes` accepted.
const MAX_REASON_BYTES_LIMIT: u64 = 4096;
/// Credentials other than `Authorization` that registries accept (API keys, tokens, proxy
/// credentials): an overriding write does not carry them, nor `Cookie`, so that the registry
/// can only authenticate the credential the principal was read from.
pub const DEFAULT_CREDENTIAL_HEADERS: [&str; 11] = [
    "proxy-authorization",
    "x-api-key",
    "api-key",
    "x-auth-token",
    "private-token",
    "job-token",
    "deploy-token",
    "x-jfrog-art-api",
    "x-registry-auth",
    "x-amz-security-token",
    "x-goog-iam-authorization-token",
];
/// How long a window lasts: opened by a read of the tag that carries the reason header and that
/// the registry answered 2xx (for clients that cannot send headers on a push: skopeo, podman).
pub const WINDOW_MS: u64 = 300_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Overwrite,
    Delete,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Overwrite => "overwrite",
            Action::Delete => "delete",
        }
    }
}

#[derive(Debug, Clone)]
pub struct BreakGlass {
    pub principals: Vec<String>,
    /// The globs as written (empty: every repository) and their matcher.
    pub repositories: Vec<String>,
    matcher: Option<Exclusions>,
    pub actions: Vec<Action>,
    /// Lower-case, as Envoy hands header names to the filter.
    pub reason_header: String,
    /// A longer reason is refused (it is logged, and stored in windows).
    pub max_reason_bytes: usize,
    /// Lower-case: stripped from an overriding write, with `cookie`.
    pub credential_headers: Vec<String>,
    /// `payload_in_metadata` of Envoy's jwt_authn provider: the `sub` it verified is a
    /// principal proven by Envoy (`None`: only the registry proves).
    pub jwt_authn_payload: Option<String>,
}

/// What a refused request brings to the exception.
#[derive(Debug, Clone, Default)]
pub struct Ask<'a> {
    /// The name its credentials claim (`principal`).
    pub principal: Option<&'a str>,
    /// The reason header's value, or a window's reason.
    pub reason: Option<&'a str>,
    /// Whether the registry demands authentication (`None`: unknown).
    pub registry_auth: Option<bool>,
    /// The principal is the `sub` Envoy's jwt_authn verified: proven without the registry.
    pub verified: bool,
}

fn err(field: &str, value: &str, reason: &str) -> ConfigError {
    let value = if value.is_empty() { String::new() } else { serde_json::Value::from(value).to_string() };
    ConfigError { field: format!("break_glass.{field}"), value, reason: reason.into() }
}

impl BreakGlass {
    /// Reads the `break_glass` object; errors name `break_glass.<field>` and the value.
    pub fn read(v: &Json) -> Result<BreakGlass, ConfigError> {
        let f: Fields = v.fields(
            "break_glass",
            &[
                "principals",
                "repositories",
                "actions",
                "reason_header",
                "max_reason_bytes",
                "credential_headers",
                "jwt_authn_payload",
            ],
        )?;
        let principals = f.strings_or_empty("principals")?;
        let repositories = f.strings_or_empty("repositories")?;
        let names = f.strings_or_empty("actions")?;
        let header = f.opt_string("reason_header")?.unwrap_or_else(|| DEFAULT_REASON_HEADER.into());
        let max_reason =
            f.opt_uint("max_reason_bytes", "u64", u64::MAX)?.unwrap_or(DEFAULT_MAX_REASON_BYTES as u64);
        if !(1..=MAX_REASON_BYTES_LIMIT).contains(&max_reason) {
            let reason = format!("must be between 1 and {MAX_REASON_BYTES_LIMIT}");
            return Err(ConfigError {
                field: "break_glass.max_reason_bytes".into(),
                value: max_reason.to_string(),
                reason,
            });
        }
        let credential_headers = match f.present("credential_headers") {
            Some(_) => f.strings_or_empty("credential_headers")?,
            None => DEFAULT_CREDENTIAL_HEADERS.iter().map(|h| h.to_string()).collect(),
        };
        let is_name =
            |h: &str| !h.is_empty() && h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if let Some(h) =
            credential_headers.iter().find(|h| !is_name(h) || h.eq_ignore_ascii_case("authorization"))
        {
            return Err(err(
                "credential_headers",
                h,
                "must list header names (letters, digits, - and _) other than authorization",
            ));
        }
        let mut actions = Vec::new();
        for a in &names {
            actions.push(match a.as_str() {
                "overwrite" => Action::Overwrite,
                "delete" => Action::Delete,
                _ => return Err(err("actions", a, "must be \"overwrite\" or \"delete\"")),
            });
        }
        if f.present("actions").is_none() {
            actions = vec![Action::Overwrite, Action::Delete];
        }
        let bad = if principals.is_empty() || principals.iter().any(String::is_empty) {
            Some(("principals", "", "must list non-empty principal names"))
        } else if actions.is_empty() {
            Some(("actions", "", "must list \"overwrite\", \"delete\" or both"))
        } else if header.is_empty()
            || !header.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            Some(("reason_header", header.as_str(), "must be a header name (letters, digits, - and _)"))
        } else {
            None
        };
        if let Some((field, value, why)) = bad {
            return Err(err(field, value, why));
        }
        let mut res = Vec::new();
        for g in &repositories {
            res.push(glob::to_regex(g).map_err(|why| err("repositories", g, &why))?);
        }
        // The exclusion matcher's code, reused: "excluded" reads "selected" here.
        let matcher = if res.is_empty() {
            None
        } else {
            Some(Exclusions::compile(&res).map_err(|(_, why)| err("repositories", "", &why))?)
        };
        let max_reason_bytes = usize::try_from(max_reason).unwrap_or(DEFAULT_MAX_REASON_BYTES);
        let credential_headers = credential_headers.iter().map(|h| h.to_ascii_lowercase()).collect();
        let jwt_authn_payload = f.opt_string("jwt_authn_payload")?;
        if jwt_authn_payload.as_deref() == Some("") {
            return Err(err(
                "jwt_authn_payload",
                "",
                "must name the jwt_authn provider's payload_in_metadata",
            ));
        }
        let reason_header = header.to_ascii_lowercase();
        Ok(BreakGlass {
            principals,
            repositories,
            matcher,
            actions,
            reason_header,
            max_reason_bytes,
            credential_headers,
            jwt_authn_payload,
        })
    }

    /// Whether `action` on `repository` can be overridden at all (by someone), or why not.
    pub fn covers(&self, action: Action, repository: &str) -> Result<(), String> {
        if !self.actions.contains(&action) {
            return Err(format!("break_glass.actions does not include \"{}\"", action.as_str()));
        }
        match &self.matcher {
            Some(m) if !matches!(m.matches(repository), Match::Excluded(_)) => {
                Err(format!("repository '{repository}' is not in break_glass.repositories"))
            }
            _ => Ok(()),
        }
    }

    /// Whether an overriding request must not carry this (lower-case) header: a credential
    /// other than the `Authorization` its principal was read from.
    pub fn strips(&self, name: &str) -> bool {
        name == "cookie" || self.credential_headers.iter().any(|h| h == name)
    }

    /// Lifts the refusal of `action` on `repository`, or says why not.
    pub fn grant(&self, action: Action, repository: &str, ask: &Ask) -> Result<(), String> {
        self.covers(action, repository)?;
        let h = &self.reason_header;
        match ask.reason.map(str::trim) {
            None => return Err(format!("no {h} header")),
            Some("") => return Err(format!("the {h} header is empty")),
            // The header as sent (padding included): that is what is logged and stored.
            Some(_) if ask.reason.map_or(0, str::len) > self.max_reason_bytes => {
                let n = ask.reason.map_or(0, str::len);
                return Err(format!(
                    "the {h} header is {n} bytes, longer than break_glass.max_reason_bytes ({})",
                    self.max_reason_bytes
                ));
            }
            Some(_) => {}
        }
        let Some(p) = ask.principal else {
            return Err(
                "the request names no principal (Authorization: Basic, or Bearer with a JWT sub)".into()
            );
        };
        if !self.principals.iter().any(|x| x == p) {
            return Err(format!("principal '{p}' is not in break_glass.principals"));
        }
        if ask.verified {
            return Ok(());
        }
        match ask.registry_auth {
            Some(true) => Ok(()),
            Some(false) => {
                Err(format!("the registry does not demand authentication, so principal '{p}' is unproven"))
            }
            None => Err("the filter could not learn whether the registry demands authentication".into()),
        }
    }
}

/// The name `Authorization` claims: Basic's user name, or a Bearer JWT's `sub` (read, not
/// verified: the registry verifies it).
pub fn principal(authorization: &str) -> Option<String> {
    let (scheme, cred) = authorization.trim().split_once(' ')?;
    let cred = cred.trim();
    let name = if scheme.eq_ignore_ascii_case("basic") {
        let text = String::from_utf8(decode(cred)?).ok()?;
        text.split_once(':')?.0.to_string()
    } else if scheme.eq_ignore_ascii_case("bearer") {
        let payload = decode(cred.split('.').nth(1)?)?;
        let Json::Object(fields) = Json::parse(&payload).ok()? else { return None };
        // Go's encoding/json takes the last of the keys that fold to "sub" (any case, also
        // U+017F 'ſ'); the filter took the first "sub". A payload with more than one, or with
        // one spelled otherwise, names no one.
        let mut subs = fields.into_iter().filter(|(k, _)| folds_to_sub(k));
        match (subs.next(), subs.next()) {
            (Some((k, Json::Str(s))), None) if k == "sub" => s,
            _ => return None,
        }
    } else {
        return None;
    };
    (!name.is_empty()).then_some(name)
}

fn folds_to_sub(key: &str) -> bool {
    let folded: String =
        key.chars().map(|c| if c == '\u{17f}' { 's' } else { c.to_ascii_lowercase() }).collect();
    folded == "sub"
}

/// A window opened for one principal and one `repository:tag` (kept in shared data, or in etcd:
/// `filter::break_glass::window`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    pub principal: String,
    pub reason: String,
    pub expires_ms: u64,
}

impl Window {
    /// Its shared-data key, one per tag and principal as in etcd (`crate::store::etcd::window_key`),
    /// so that one principal's read does not replace another's window. Names and tags hold no
    /// ':', so the principal is all that follows the second.
    pub fn key(repository: &str, tag: &str, principal: &str) -> String {
        format!("immutable_tags.break_glass/{repository}:{tag}:{principal}")
    }

    pub fn encode(&self) -> Vec<u8> {
        format!("{}\n{}\n{}", self.expires_ms, self.principal, self.reason).into_bytes()
    }

    /// The window, if `bytes` hold one still open at `now_ms` (a used one is written empty).
    pub fn open(bytes: &[u8], now_ms: u64) -> Option<Window> {
        let text = std::str::from_utf8(bytes).ok()?;
        let mut parts = text.splitn(3, '\n');
        let expires_ms = parts.next()?.parse().ok()?;
        let principal = parts.next()?.to_string();
        let reason = parts.next()?.to_string();
        (now_ms < expires_ms).then_some(Window { principal, reason, expires_ms })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    // The same tests run on wasm32 under wasm-bindgen-test (Node.js).
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn bg(json: &str) -> Result<BreakGlass, ConfigError> {
        BreakGlass::read(&Json::parse(json.as_bytes()).unwrap())
    }

    const ADMIN: Ask = Ask {
        principal: Some("release-admin"),
        reason: Some("CVE-2026-1"),
        registry_auth: Some(true),
        verified: false,
    };

    #[test]
    fn config_defaults_and_errors_name_the_field() {
        let b = bg(r#"{"principals": ["release-admin"]}"#).unwrap();
        assert_eq!(b.actions, vec![Action::Overwrite, Action::Delete]);
        assert_eq!(b.reason_header, "x-break-glass-reason");
        // A header name of letters, digits, '-' and '_' is taken as is (lower-cased: Envoy's).
        assert_eq!(
            bg(r#"{"principals": ["a"], "reason_header": "X-Why_2"}"#).unwrap().reason_header,
            "x-why_2"
        );
        assert!(b.grant(Action::Delete, "any/repo", &ADMIN).is_ok(), "default: every repository");
        for (json, field) in [
            (r#"{"principals": "release-admin"}"#, "break_glass.principals"),
            (r#"{"principals": [1]}"#, "break_glass.principals[0]"),
            (r#"{"principals": []}"#, "break_glass.principals"),
            (r#"{"principals": ["a"], "actions": ["push"]}"#, "break_glass.actions"),
            (r#"{"principals": ["a"], "reason_header": ""}"#, "break_glass.reason_header"),
            (r#"{"principals": ["a"], "reason_header": "X Why"}"#, "break_glass.reason_header"),
            (r#"{"principals": ["a"], "reason_header": "X-Why:"}"#, "break_glass.reason_header"),
            (r#"{"principals": ["a"], "repositories": ["{a"]}"#, "break_glass.repositories"),
            (r#"{"principals": ["a"], "who": 1}"#, "break_glass.who"),
            (r#"{"principals": ["a"], "actions": []}"#, "break_glass.actions"),
        ] {
            assert_eq!(bg(json).unwrap_err().field, field, "{json}");
        }
    }

    #[test]
    fn overriding_requests_carry_no_second_credential() {
        let b = bg(r#"{"principals": ["a"]}"#).unwrap();
        for h in
            ["cookie", "x-api-key", "private-token", "job-token", "x-jfrog-art-api", "proxy-authorization"]
        {
            assert!(b.strips(h), "{h}");
        }
        assert!(!b.strips("authorization") && !b.strips("content-type"));
        // The list replaces the default; Cookie always goes.
        let b = bg(r#"{"principals": ["a"], "credential_headers": ["X-Corp-Key"]}"#).unwrap();
        assert!(b.strips("x-corp-key") && b.strips("cookie") && !b.strips("x-api-key"));
        for json in [
            r#"{"principals": ["a"], "credential_headers": ["Authorization"]}"#,
            r#"{"principals": ["a"], "credential_headers": ["a b"]}"#,
            r#"{"principals": ["a"], "credential_headers": [""]}"#,
            r#"{"principals": ["a"], "credential_headers": "x-api-key"}"#,
        ] {
            assert!(bg(json).unwrap_err().field.starts_with("break_glass.credential_headers"), "{json}");
        }
    }

    #[test]
    fn grant_needs_everything_and_says_why_not() {
        let b =
            bg(r#"{"principals": ["release-admin"], "repositories": ["prod/**"], "actions": ["overwrite"]}"#)
                .unwrap();
        assert_eq!(b.grant(Action::Overwrite, "prod/api", &ADMIN), Ok(()));
        let why = |action, repo, ask: Ask| b.grant(action, repo, &ask).unwrap_err();
        assert!(why(Action::Delete, "prod/api", ADMIN).contains("actions"));
        assert!(why(Action::Overwrite, "dev/api", ADMIN).contains("not in break_glass.repositories"));
        assert!(why(Action::Overwrite, "prod/api", Ask { reason: None, ..ADMIN })
            .contains("no x-break-glass-reason"));
        assert!(why(Action::Overwrite, "prod/api", Ask { reason: Some("  "), ..ADMIN }).contains("empty"));
        assert!(why(Action::Overwrite, "prod/api", Ask { principal: Some("bob"), ..ADMIN })
            .contains("'bob' is not in"));
        assert!(why(Action::Overwrite, "prod/api", Ask { principal: None, ..ADMIN })
            .contains("names no principal"));
        assert!(why(Action::Overwrite, "prod/api", Ask { registry_auth: Some(false), ..ADMIN })
            .contains("unproven"));
        assert!(why(Action::Overwrite, "prod/api", Ask { registry_auth: None, ..ADMIN })
            .contains("could not learn"));
        // A principal Envoy's jwt_authn verified needs no proof from the registry.
        assert!(b
            .grant(
                Action::Overwrite,
                "prod/api",
                &Ask { registry_auth: Some(false), verified: true, ..ADMIN }
            )
            .is_ok());
        assert!(why(Action::Overwrite, "prod/api", Ask { principal: Some("bob"), verified: true, ..ADMIN })
            .contains("not in break_glass.principals"));
    }

    #[test]
    fn principals_from_basic_and_bearer() {
        assert_eq!(principal("Basic cmVsZWFzZS1hZG1pbjpwdw=="), Some("release-admin".into()));
        assert_eq!(principal("basic cmVsZWFzZS1hZG1pbjpwdw"), Some("release-admin".into()), "unpadded");
        // {"alg":"RS256"}.{"sub":"release-admin","x":"?>"} (URL-safe payload).
        let jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJyZWxlYXNlLWFkbWluIiwieCI6Ij8-In0.c2ln";
        assert_eq!(principal(&format!("Bearer {jwt}")), Some("release-admin".into()));
        assert_eq!(principal("Bearer opaque-token"), None);
        assert_eq!(principal("Bearer a.e30.b"), None, "no sub");
        let bearer =
            |payload: &str| format!("Bearer e30.{}.c2ln", crate::util::base64::encode(payload.as_bytes()));
        assert_eq!(principal(&bearer(r#"{"sub":"release-admin"}"#)), Some("release-admin".into()));
        for two in [
            r#"{"sub":"release-admin","sub":"mallory"}"#,
            r#"{"sub":"release-admin","Sub":"mallory"}"#,
            r#"{"sub":"release-admin","SUB":"mallory"}"#,
            r#"{"sub":"release-admin","\u017fub":"mallory"}"#,
            r#"{"sub":"release-admin","s\u0075b":"mallory"}"#,
            r#"{"Sub":"release-admin"}"#,
        ] {
            assert_eq!(principal(&bearer(two)), None, "{two}");
        }
        assert_eq!(principal("Basic !!"), None);
        assert_eq!(principal("Basic OnB3"), None, "empty user");
        assert_eq!(principal("Digest x"), None);
    }

    #[test]
    fn windows_open_and_expire() {
        let w = Window { principal: "release-admin".into(), reason: "CVE\nx".into(), expires_ms: 100 };
        assert_eq!(Window::open(&w.encode(), 99), Some(w.clone()));
        assert_eq!(Window::open(&w.encode(), 100), None);
        assert_eq!(Window::open(b"", 1), None, "used up");
    }

    #[test]
    fn each_tag_has_its_own_window_key() {
        // A shared key would let a window opened for one tag serve another.
        assert_eq!(Window::key("team/app", "v1", "admin"), "immutable_tags.break_glass/team/app:v1:admin");
        assert_ne!(Window::key("team/app", "v1", "a"), Window::key("team/app", "v2", "a"));
        assert_ne!(Window::key("team/app", "v1", "a"), Window::key("team/api", "v1", "a"));
        assert_ne!(Window::key("team/app", "v1", "a"), Window::key("team/app", "v1", "b"));
    }

    #[test]
    fn the_reason_is_bounded() {
        let b = bg(r#"{"principals": ["release-admin"]}"#).unwrap();
        assert_eq!(b.max_reason_bytes, DEFAULT_MAX_REASON_BYTES);
        let long = "x".repeat(DEFAULT_MAX_REASON_BYTES + 1);
        let why = b.grant(Action::Delete, "prod/api", &Ask { reason: Some(&long), ..ADMIN }).unwrap_err();
        assert_eq!(
            why,
            format!("the x-break-glass-reason header is {} bytes, longer than break_glass.max_reason_bytes ({DEFAULT_MAX_REASON_BYTES})", DEFAULT_MAX_REASON_BYTES + 1)
        );
        // Padding counts: what is logged and stored is the header as sent.
        let padded = format!("INC-9{}", " ".repeat(DEFAULT_MAX_REASON_BYTES));
        assert!(b
            .grant(Action::Delete, "prod/api", &Ask { reason: Some(&padded), ..ADMIN })
            .unwrap_err()
            .contains("longer than"));
        let exact = "x".repeat(DEFAULT_MAX_REASON_BYTES);
        assert!(b.grant(Action::Delete, "prod/api", &Ask { reason: Some(&exact), ..ADMIN }).is_ok());
        let b = bg(r#"{"principals": ["a"], "max_reason_bytes": 10}"#).unwrap();
        assert!(b
            .grant(Action::Delete, "x", &Ask { principal: Some("a"), reason: Some("12345678901"), ..ADMIN })
            .unwrap_err()
            .contains("(10)"));
        for bad in ["0", "4097", "-1", "\"300\""] {
            let e = bg(&format!(r#"{{"principals": ["a"], "max_reason_bytes": {bad}}}"#)).unwrap_err();
            assert_eq!(e.field, "break_glass.max_reason_bytes", "{bad}");
            assert!(
                e.to_string().contains(&format!("= {bad}")) || e.to_string().contains("expected"),
                "{bad}: {e}"
            );
        }
    }
}
