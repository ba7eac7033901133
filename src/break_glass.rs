//! Break-glass: a narrow, accountable exception to a refused overwrite or delete. Pure: who a
//! request's credentials name, whether the configured exception applies, and why not.
//!
//! The name read here is only a claim. It counts as proven because the filter hands the same
//! credentials to the registry and counts the override only once the registry accepted the
//! write, and only when the registry demands authentication (an anonymous `GET /v2/` answered
//! 401, `registry_auth` below): against a registry without auth any name is unproven.

use crate::base64::decode;
use crate::config::ConfigError;
use crate::glob;
use crate::json_doc::{Fields, Json};
use crate::exclusions::{Exclusions, Match};

pub const DEFAULT_REASON_HEADER: &str = "x-break-glass-reason";
/// The longest reason taken (bytes): enough for a ticket and a sentence, not for a log flood.
pub const DEFAULT_MAX_REASON_BYTES: usize = 256;
/// The largest `max_reason_bytes` accepted.
const MAX_REASON_BYTES_LIMIT: u64 = 4096;
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
}

fn err(field: &str, value: &str, reason: &str) -> ConfigError {
    let value = if value.is_empty() { String::new() } else { serde_json::Value::from(value).to_string() };
    ConfigError { field: format!("break_glass.{field}"), value, reason: reason.into() }
}

impl BreakGlass {
    /// Reads the `break_glass` object; errors name `break_glass.<field>` and the value.
    pub fn read(v: &Json) -> Result<BreakGlass, ConfigError> {
        let f: Fields = v.fields("break_glass", &["principals", "repositories", "actions", "reason_header", "max_reason_bytes"])?;
        let principals = f.strings_or_empty("principals")?;
        let repositories = f.strings_or_empty("repositories")?;
        let names = f.strings_or_empty("actions")?;
        let header = f.opt_string("reason_header")?.unwrap_or_else(|| DEFAULT_REASON_HEADER.into());
        let max_reason = f.opt_uint("max_reason_bytes", "u64", u64::MAX)?.unwrap_or(DEFAULT_MAX_REASON_BYTES as u64);
        if !(1..=MAX_REASON_BYTES_LIMIT).contains(&max_reason) {
            let reason = format!("must be between 1 and {MAX_REASON_BYTES_LIMIT}");
            return Err(ConfigError { field: "break_glass.max_reason_bytes".into(), value: max_reason.to_string(), reason });
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
        } else if header.is_empty() || !header.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
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
        let matcher = if res.is_empty() { None } else { Some(Exclusions::compile(&res).map_err(|(_, why)| err("repositories", "", &why))?) };
        let max_reason_bytes = usize::try_from(max_reason).unwrap_or(DEFAULT_MAX_REASON_BYTES);
        Ok(BreakGlass { principals, repositories, matcher, actions, reason_header: header.to_ascii_lowercase(), max_reason_bytes })
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
                return Err(format!("the {h} header is {n} bytes, longer than break_glass.max_reason_bytes ({})", self.max_reason_bytes));
            }
            Some(_) => {}
        }
        let Some(p) = ask.principal else {
            return Err("the request names no principal (Authorization: Basic, or Bearer with a JWT sub)".into());
        };
        if !self.principals.iter().any(|x| x == p) {
            return Err(format!("principal '{p}' is not in break_glass.principals"));
        }
        match ask.registry_auth {
            Some(true) => Ok(()),
            Some(false) => Err(format!("the registry does not demand authentication, so principal '{p}' is unproven")),
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
        match Json::parse(&payload).ok()? {
            Json::Object(fields) => match fields.into_iter().find(|(k, _)| k == "sub")?.1 {
                Json::Str(s) => s,
                _ => return None,
            },
            _ => return None,
        }
    } else {
        return None;
    };
    (!name.is_empty()).then_some(name)
}

/// A window opened for one principal and one `repository:tag` (kept in shared data, or in etcd:
/// `filter::window`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    pub principal: String,
    pub reason: String,
    pub expires_ms: u64,
}

impl Window {
    /// Its shared-data key (etcd's: `crate::etcd::window_key`).
    pub fn key(repository: &str, tag: &str) -> String {
        format!("immutable_tags.break_glass/{repository}:{tag}")
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

    const ADMIN: Ask = Ask { principal: Some("release-admin"), reason: Some("CVE-2026-1"), registry_auth: Some(true) };

    #[test]
    fn config_defaults_and_errors_name_the_field() {
        let b = bg(r#"{"principals": ["release-admin"]}"#).unwrap();
        assert_eq!(b.actions, vec![Action::Overwrite, Action::Delete]);
        assert_eq!(b.reason_header, "x-break-glass-reason");
        // A header name of letters, digits, '-' and '_' is taken as is (lower-cased: Envoy's).
        assert_eq!(bg(r#"{"principals": ["a"], "reason_header": "X-Why_2"}"#).unwrap().reason_header, "x-why_2");
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
    fn grant_needs_everything_and_says_why_not() {
        let b = bg(r#"{"principals": ["release-admin"], "repositories": ["prod/**"], "actions": ["overwrite"]}"#).unwrap();
        assert_eq!(b.grant(Action::Overwrite, "prod/api", &ADMIN), Ok(()));
        let why = |action, repo, ask: Ask| b.grant(action, repo, &ask).unwrap_err();
        assert!(why(Action::Delete, "prod/api", ADMIN).contains("actions"));
        assert!(why(Action::Overwrite, "dev/api", ADMIN).contains("not in break_glass.repositories"));
        assert!(why(Action::Overwrite, "prod/api", Ask { reason: None, ..ADMIN }).contains("no x-break-glass-reason"));
        assert!(why(Action::Overwrite, "prod/api", Ask { reason: Some("  "), ..ADMIN }).contains("empty"));
        assert!(why(Action::Overwrite, "prod/api", Ask { principal: Some("bob"), ..ADMIN }).contains("'bob' is not in"));
        assert!(why(Action::Overwrite, "prod/api", Ask { principal: None, ..ADMIN }).contains("names no principal"));
        assert!(why(Action::Overwrite, "prod/api", Ask { registry_auth: Some(false), ..ADMIN }).contains("unproven"));
        assert!(why(Action::Overwrite, "prod/api", Ask { registry_auth: None, ..ADMIN }).contains("could not learn"));
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
        assert_eq!(Window::key("team/app", "v1"), "immutable_tags.break_glass/team/app:v1");
        assert_ne!(Window::key("team/app", "v1"), Window::key("team/app", "v2"));
        assert_ne!(Window::key("team/app", "v1"), Window::key("team/api", "v1"));
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
        assert!(b.grant(Action::Delete, "prod/api", &Ask { reason: Some(&padded), ..ADMIN }).unwrap_err().contains("longer than"));
        let exact = "x".repeat(DEFAULT_MAX_REASON_BYTES);
        assert!(b.grant(Action::Delete, "prod/api", &Ask { reason: Some(&exact), ..ADMIN }).is_ok());
        let b = bg(r#"{"principals": ["a"], "max_reason_bytes": 10}"#).unwrap();
        assert!(b.grant(Action::Delete, "x", &Ask { principal: Some("a"), reason: Some("12345678901"), ..ADMIN }).unwrap_err().contains("(10)"));
        for bad in ["0", "4097", "-1", "\"300\""] {
            let e = bg(&format!(r#"{{"principals": ["a"], "max_reason_bytes": {bad}}}"#)).unwrap_err();
            assert_eq!(e.field, "break_glass.max_reason_bytes", "{bad}");
            assert!(e.to_string().contains(&format!("= {bad}")) || e.to_string().contains("expected"), "{bad}: {e}");
        }
    }
}
