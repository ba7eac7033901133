//! `immutable-tags explain`: asks the filter's own policy code whether `<repository>:<tag>` is
//! immutable under a configuration, and why, without deploying it.
//! `immutable-tags check`: validates policy files with the filter's own parser.
//!
//! Exit status: 0 when a decision was printed (every file is valid), 1 when a configuration
//! cannot be read or is invalid (with the line the filter would log), 2 on a usage error.

use immutable_tags::config::{BlobDeletes, Config, Mode, OnUpstreamError};
use immutable_tags::oci::request::{is_valid_name, is_valid_tag};
use immutable_tags::policy::pattern::can_match;
use immutable_tags::policy::rules::split_top_level;
use immutable_tags::verdict::break_glass::{Action, Ask};
use immutable_tags::BUILD;
use std::io::{Read, Write};
use std::process::ExitCode;

const USAGE: &str = "usage: immutable-tags explain --config <policy.json | -> [--as <principal>] [--reason <text>] <repository> <tag>
       immutable-tags explain --config <policy.json | -> [--as <principal>] [--reason <text>] <repository>:<tag>
       immutable-tags check [--strict] <policy.json>...

Prints whether the tag is immutable under the configuration and the setting or rule that
decides it; `check` validates each file and prints its effective policy or its error. The
configuration is the filter's plugin configuration (JSON); `-` reads stdin. `check` warns about
selectors and scopes that can never apply; `--strict` makes a warning fail the check (for CI). With `break_glass`,
`explain` says who may override the tag, and (`--as`, `--reason`) whether a request by that
principal would, or why not (taking the registry's authentication as proven).";

struct Explain {
    config: String,
    principal: Option<String>,
    reason: Option<String>,
    repository: String,
    tag: String,
}

fn parse(args: &[String]) -> Result<Option<Explain>, String> {
    let mut it = args.iter();
    match it.next().map(String::as_str) {
        Some("explain") => {}
        Some("-h" | "--help" | "help") => return Ok(None),
        Some(other) => return Err(format!("unknown command {other:?}")),
        None => return Err("missing command".into()),
    }
    let mut config = None;
    let (mut principal, mut reason) = (None, None);
    let mut positional = Vec::new();
    while let Some(a) = it.next() {
        if a == "-h" || a == "--help" {
            return Ok(None);
        } else if a == "--config" || a == "-c" {
            config = Some(it.next().ok_or("--config needs a file")?.clone());
        } else if a == "--as" {
            principal = Some(it.next().ok_or("--as needs a principal")?.clone());
        } else if a == "--reason" {
            reason = Some(it.next().ok_or("--reason needs a text")?.clone());
        } else if let Some(v) = a.strip_prefix("--config=") {
            config = Some(v.to_string());
        } else if a.starts_with("--") {
            return Err(format!("unknown option {a:?}"));
        } else {
            positional.push(a.clone());
        }
    }
    let config = config.ok_or("--config is required")?;
    let (repository, tag) = match positional.as_slice() {
        [r, t] => (r.clone(), t.clone()),
        [reference] => match reference.rsplit_once(':') {
            Some((r, t)) => (r.to_string(), t.to_string()),
            None => return Err(format!("{reference:?}: give <repository> <tag> or <repository>:<tag>")),
        },
        _ => return Err("give <repository> <tag> or <repository>:<tag>".into()),
    };
    if !is_valid_name(&repository) {
        return Err(format!("{repository:?} is not an OCI repository name (lower-case, e.g. team/app)"));
    }
    if !is_valid_tag(&tag) {
        return Err(format!("{tag:?} is not an OCI tag ([A-Za-z0-9_][A-Za-z0-9._-]{{0,127}})"));
    }
    Ok(Some(Explain { config, principal, reason, repository, tag }))
}

fn read_config(path: &str) -> std::io::Result<Vec<u8>> {
    if path == "-" {
        let mut buf = Vec::new();
        std::io::stdin().read_to_end(&mut buf)?;
        Ok(buf)
    } else {
        std::fs::read(path)
    }
}

/// Writes to stdout; a closed pipe (`| head`) is not worth a panic.
fn out(text: &str) {
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

/// Exclusions that read like prefixes but match one literal tag, by field path.
fn exclusion_warnings(c: &Config) -> Vec<(String, String)> {
    let global = std::iter::once(("global".to_string(), &c.policy.global));
    let scopes = c.policy.repositories.iter().map(|(k, s)| (format!("repository.\"{k}\""), s));
    let mut found = Vec::new();
    for (scope, s) in global.chain(scopes) {
        let patterns = s.exclusions.as_ref().map(|e| e.patterns()).unwrap_or_default();
        for (i, p) in patterns.iter().enumerate() {
            if let Some(why) = immutable_tags::policy::exclusions::literal_prefix_warning(p) {
                found.push((format!("{scope}.immutable_tags_exclusions[{i}]"), format!("{p:?} {why}")));
            }
        }
    }
    found
}

/// Tags: `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`.
fn tag_first(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}
fn tag_rest(b: u8) -> bool {
    tag_first(b) || b == b'.' || b == b'-'
}
/// Names: lower-case components of `[a-z0-9._-]` joined by `/` (the grammar's finer points,
/// such as no `..`, are left out: a warning must never be wrong).
fn name_first(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}
fn name_rest(b: u8) -> bool {
    name_first(b) || matches!(b, b'.' | b'_' | b'-' | b'/')
}
fn project_rest(b: u8) -> bool {
    name_rest(b) && b != b'/'
}

/// What a selector is matched against: its name in a warning and its characters.
#[derive(Clone, Copy)]
struct Grammar {
    what: &'static str,
    first: fn(u8) -> bool,
    rest: fn(u8) -> bool,
    max: usize,
}

const TAG: Grammar =
    Grammar { what: "a tag (A-Z, a-z, 0-9, _, ., -; no /)", first: tag_first, rest: tag_rest, max: 128 };
const NAME: Grammar = Grammar {
    what: "a repository name (lower-case a-z, 0-9, ., _, -, /)",
    first: name_first,
    rest: name_rest,
    max: 255,
};
const PROJECT: Grammar = Grammar {
    what: "a project (lower-case a-z, 0-9, ., _, -: one path component)",
    first: name_first,
    rest: project_rest,
    max: 255,
};

/// Adds a warning when `regex` (the translation of `pattern`) matches nothing `g` allows.
fn never(found: &mut Vec<(String, String)>, field: String, pattern: &str, regex: &str, g: Grammar) {
    if !can_match(regex, g.first, g.rest, g.max) {
        found.push((field, format!("{pattern:?} can never match {}, so it has no effect", g.what)));
    }
}

/// Rule selectors and exclusions that no valid name or tag can match, and scopes that can
/// never apply, by field path. Read from the JSON itself: the compiled policy keeps no paths.
fn never_warnings(c: &Config, doc: &serde_json::Value) -> Vec<(String, String)> {
    let mut found = Vec::new();
    let glob = |g: &str| {
        immutable_tags::policy::glob::to_regex(g)
            .map(|re| format!("(?s){re}"))
            .unwrap_or_else(|_| ".*".into())
    };
    for (i, rule) in doc.get("rules").and_then(|r| r.as_array()).into_iter().flatten().enumerate() {
        let at = format!("rules[{i}]");
        for (key, g) in [("projects", PROJECT), ("repositories", NAME), ("tags", TAG)] {
            let Some(sel) = rule.get(key) else { continue };
            let mut lists = Vec::new();
            match sel {
                serde_json::Value::Object(o) => {
                    for (k, v) in o {
                        if k == "regex" {
                            if let Some(re) = v.as_str() {
                                never(&mut found, format!("{at}.{key}.regex"), re, re, g);
                            }
                        } else {
                            lists.push((format!("{at}.{key}.{k}"), v));
                        }
                    }
                }
                v => lists.push((format!("{at}.{key}"), v)),
            }
            for (field, v) in lists {
                let values: Vec<(String, &str)> = match v {
                    serde_json::Value::Array(a) => a
                        .iter()
                        .enumerate()
                        .filter_map(|(j, s)| Some((format!("{field}[{j}]"), s.as_str()?)))
                        .collect(),
                    v => v.as_str().map(|s| (field.clone(), s)).into_iter().collect(),
                };
                for (field, value) in values {
                    for p in split_top_level(value).into_iter().map(str::trim) {
                        never(&mut found, field.clone(), p, &glob(p), g);
                    }
                }
            }
        }
    }
    let p = &c.policy;
    let scopes = std::iter::once(("global".to_string(), None, &p.global))
        .chain(p.repositories.iter().map(|(k, s)| (format!("repository.\"{k}\""), Some(k.as_str()), s)));
    for (at, key, s) in scopes {
        for (j, e) in s.exclusions.as_ref().map(|e| e.patterns()).unwrap_or_default().iter().enumerate() {
            never(&mut found, format!("{at}.immutable_tags_exclusions[{j}]"), e, &format!("^(?:{e})$"), TAG);
        }
        let Some(key) = key else { continue };
        let o = p.origins(key);
        if s.immutable_tags.is_none() && s.exclusions.is_none() {
            found.push((at.clone(), "sets neither immutable_tags nor a non-empty immutable_tags_exclusions: this scope never changes a decision".into()));
        }
        // Dead only if no scope that takes its exclusions from this one (itself, or a nested
        // scope that sets none) ends up immutable.
        let applies = || {
            p.repositories.iter().any(|(k, _)| {
                let t = p.origins(k);
                t.exclusions_from == at && t.immutable_tags == Some(true)
            })
        };
        if s.exclusions.is_some() && !applies() {
            let value = o.immutable_tags.map_or("unset".to_string(), |v| v.to_string());
            found.push((
                format!("{at}.immutable_tags_exclusions"),
                format!("never apply: immutable_tags is {value} here (from {}) and in every scope that inherits them", o.immutable_tags_from),
            ));
        }
        // Before nested scopes inherited, an unset field came from `global`: name what now differs
        // (a scope that would lose global's `immutable_tags = true` so is refused at load).
        let global_list = p.global.exclusions.as_ref().map(|e| e.patterns()).unwrap_or_default();
        let now = o.exclusions.map(|e| e.patterns()).unwrap_or_default();
        if s.exclusions.is_none() && o.immutable_tags == Some(true) && now != global_list {
            found.push((at.clone(), format!("inherits immutable_tags_exclusions from {} (global's applied here before scopes inherited from enclosing scopes); set them on this scope to keep that", o.exclusions_from)));
        }
    }
    found
}

/// `check [--strict] FILE...`: every file through the filter's parser; 1 if any is unreadable
/// or invalid, or (`--strict`) draws a warning.
fn check(args: &[String]) -> ExitCode {
    let strict = args.iter().any(|a| a == "--strict");
    let files: Vec<&String> = args.iter().filter(|a| *a != "--strict").collect();
    if files.is_empty() {
        eprintln!("immutable-tags: check needs at least one file\n{USAGE}");
        return ExitCode::from(2);
    }
    let mut ok = true;
    for path in files {
        match read_config(path).map(|b| (Config::from_json(&b), b)) {
            Ok((Ok(c), bytes)) => {
                out(&format!("ok {path}: {}{}\n", c.summary(), break_glass_summary(&c)));
                out(&policy_table(&c));
                let doc = serde_json::from_slice(&bytes).unwrap_or_default();
                let mut warnings = exclusion_warnings(&c);
                warnings.extend(never_warnings(&c, &doc));
                for (field, why) in &warnings {
                    out(&format!("warning {path}: field `{field}`: {why}\n"));
                }
                if strict && !warnings.is_empty() {
                    ok = false;
                    out(&format!("failed {path}: {} warning(s) (--strict)\n", warnings.len()));
                }
            }
            Ok((Err(why), _)) => {
                ok = false;
                out(&format!("invalid {path}: {why}\n"));
            }
            Err(why) => {
                ok = false;
                out(&format!("unreadable {path}: {why}\n"));
            }
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// The effective policy as `check` prints it under the summary line, for a reviewer of a policy
/// change: Markdown tables (indented, so they stay apart from the `ok`/`warning` lines) of what
/// each scope makes immutable and where each field is set, the rules, then mode, deletes and
/// who may break glass.
fn policy_table(c: &Config) -> String {
    let p = &c.policy;
    let cell = |s: &str| s.replace('|', "\\|");
    let yes_no = |b: Option<bool>| if b == Some(true) { "yes" } else { "no" };
    let exclusions =
        |immutable: Option<bool>, e: Option<&immutable_tags::policy::exclusions::Exclusions>| match (
            immutable, e,
        ) {
            (Some(true), Some(e)) if !e.patterns().is_empty() => {
                e.patterns().iter().map(|x| format!("`{}`", cell(x))).collect::<Vec<_>>().join(", ")
            }
            (Some(true), _) => "none".to_string(),
            _ => "none apply (tags are mutable)".to_string(),
        };
    let mut t = String::from("  | scope | tags immutable | set in | exclusions (tags that stay mutable) | set in |\n  |---|---|---|---|---|\n");
    let g = &p.global;
    let set = |is_set: bool| if is_set { "global" } else { "(unset)" };
    let global_exclusions = g.exclusions.as_ref().is_some_and(|e| !e.patterns().is_empty());
    t += &format!(
        "  | global | {} | {} | {} | {} |\n",
        yes_no(g.immutable_tags),
        set(g.immutable_tags.is_some()),
        exclusions(g.immutable_tags, g.exclusions.as_ref()),
        set(global_exclusions)
    );
    let mut keys: Vec<&String> = p.repositories.iter().map(|(k, _)| k).collect();
    keys.sort();
    for k in keys {
        let o = p.origins(k);
        let here = |origin: String| {
            if origin == format!("repository.\"{k}\"") {
                "here".to_string()
            } else {
                origin
            }
        };
        let imm_from =
            if o.immutable_tags.is_some() { here(o.immutable_tags_from) } else { "(unset)".to_string() };
        let exc_set = o.exclusions.is_some_and(|e| !e.patterns().is_empty());
        let exc_from = if exc_set { here(o.exclusions_from) } else { "(unset)".to_string() };
        t += &format!(
            "  | {} | {} | {imm_from} | {} | {exc_from} |\n",
            cell(k),
            yes_no(o.immutable_tags),
            exclusions(o.immutable_tags, o.exclusions)
        );
    }
    if p.rules.enabled() == 0 {
        t += "  rules: none\n";
    } else {
        t += "  | rule (a tag the scopes leave mutable is immutable if one selects it) | selects |\n  |---|---|\n";
        for r in p.rules.iter() {
            t += &format!("  | {} | {} |\n", cell(&r.reason()), cell(r.description()));
        }
    }
    if p.rules.disabled() > 0 {
        t += &format!("  disabled rules: {} (validated, no effect)\n", p.rules.disabled());
    }
    t += &if p.protect_signature_tags {
        "  signature tags (sha256-<hex>, .sig, .att, .sbom): immutable like any tag (protect_signature_tags = true)\n".to_string()
    } else {
        "  signature tags (sha256-<hex>, .sig, .att, .sbom): mutable (protect_signature_tags = false)\n"
            .to_string()
    };
    t += match c.mode {
        Mode::Enforce => "  mode: enforce (refusals are answered)\n",
        Mode::Audit => "  mode: audit (refusals are logged and counted, and the request is let through)\n",
    };
    let manifests = if c.deletes.protect {
        "of a manifest an immutable tag holds, or of an immutable tag: refused"
    } else {
        "pass unchecked (deletes.protect = false)"
    };
    let blobs = match c.deletes.blobs {
        BlobDeletes::Refuse => "refused",
        BlobDeletes::Unprotected => "let through in repositories no immutable scope or rule can select",
        BlobDeletes::Allow => "let through everywhere (deletes.blobs = allow)",
    };
    t += &format!("  deletes: {manifests}; blob deletes: {blobs}\n");
    t += &match &c.break_glass {
        None => "  break-glass: nobody (break_glass is not set)\n".to_string(),
        Some(b) => {
            let actions: Vec<&str> = b
                .actions
                .iter()
                .map(|a| if a.as_str() == "delete" { "a delete" } else { "an overwrite" })
                .collect();
            let repos = if b.repositories.is_empty() {
                "every repository".to_string()
            } else {
                b.repositories.join(", ")
            };
            let jwt = b.jwt_authn_payload.as_ref().map_or(String::new(), |m| {
                format!("; a sub verified by jwt_authn (metadata {m}) is proven by Envoy")
            });
            format!(
                "  break-glass: {} may override {} in {repos}, with a reason in the {} header{jwt}\n",
                b.principals.join(", "),
                actions.join(" or "),
                b.reason_header
            )
        }
    };
    t
}

/// `break_glass` as `check` prints it (not in `Config::summary`: the module logs that, and every
/// byte of the module counts).
fn break_glass_summary(c: &Config) -> String {
    let Some(b) = &c.break_glass else { return "; break_glass: off".into() };
    let repos =
        if b.repositories.is_empty() { "every repository".to_string() } else { b.repositories.join(", ") };
    let actions: Vec<&str> = b.actions.iter().map(|a| a.as_str()).collect();
    let (p, a) = (b.principals.join(", "), actions.join(", "));
    format!("; break_glass: principals [{p}], repositories [{repos}], actions [{a}], reason header {} (at most {} bytes)", b.reason_header, b.max_reason_bytes)
}

/// Who may override an immutable tag, and whether the given request would.
fn explain_break_glass(c: &Config, e: &Explain) -> String {
    let Some(b) = &c.break_glass else { return String::new() };
    let mut text = String::new();
    for action in [Action::Overwrite, Action::Delete] {
        let line = match (b.covers(action, &e.repository), &e.principal) {
            (Err(why), _) => format!("no {} override: {why}", action.as_str()),
            (Ok(()), None) => format!(
                "{} may be overridden by {} with the {} header",
                action.as_str(),
                b.principals.join(", "),
                b.reason_header
            ),
            (Ok(()), Some(p)) => {
                let ask = Ask {
                    principal: Some(p),
                    reason: e.reason.as_deref(),
                    registry_auth: Some(true),
                    verified: false,
                };
                match b.grant(action, &e.repository, &ask) {
                    Ok(()) => format!(
                        "{} by {p}: overridden (once the registry authenticates {p} and accepts it)",
                        action.as_str()
                    ),
                    Err(why) => format!("{} by {p}: refused: {why}", action.as_str()),
                }
            }
        };
        text += &format!("break-glass: {line}\n");
    }
    text
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(("check", files)) = args.split_first().map(|(c, rest)| (c.as_str(), rest)) {
        return check(files);
    }
    let e = match parse(&args) {
        Ok(Some(e)) => e,
        Ok(None) => {
            out(&format!("immutable-tags {BUILD}\n{USAGE}\n"));
            return ExitCode::SUCCESS;
        }
        Err(why) => {
            eprintln!("immutable-tags: {why}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let bytes = match read_config(&e.config) {
        Ok(b) => b,
        Err(why) => {
            eprintln!("immutable-tags: cannot read {}: {why}", e.config);
            return ExitCode::from(1);
        }
    };
    let config = match Config::from_json(&bytes) {
        Ok(c) => c,
        Err(why) => {
            // The very line the filter logs when Envoy loads this configuration.
            eprintln!("immutable-tags {BUILD}: {why}");
            return ExitCode::from(1);
        }
    };
    let policy = &config.policy;
    let d = policy.decide(&e.repository, &e.tag);
    // What the filter does with what it would refuse, in the configured mode.
    let refused = match config.mode {
        Mode::Enforce => "is refused",
        Mode::Audit => "would be refused; logged and let through (mode = audit)",
    };
    let verdict = match (d.immutable, config.mode) {
        (false, _) => "mutable: pushes pass unchecked".to_string(),
        (true, Mode::Enforce) => "immutable: a push of a different manifest is refused with 409".to_string(),
        (true, Mode::Audit) => format!("immutable: a push of a different manifest {refused}"),
    };
    let mut text = format!("{}:{}: {verdict}\nreason: {}\n", e.repository, e.tag, d.reason);
    if !policy.rules.is_empty() {
        text += &match policy.matching_rule(&e.repository, &e.tag) {
            Some(r) => format!("first matching rule: {}: {}\n", r.reason(), r.description()),
            None => format!("first matching rule: none of {} enabled\n", policy.rules.enabled()),
        };
    }
    text += &format!("{}\n", policy.trace(&e.repository));
    if d.immutable {
        text += &match (config.deletes.protect, config.mode) {
            (false, _) => "delete: passes unchecked (deletes.protect = false)\n".to_string(),
            (true, Mode::Enforce) => "delete: refused with 409\n".to_string(),
            (true, Mode::Audit) => format!("delete: {refused}\n"),
        };
        text += &match (config.on_upstream_error, config.mode) {
            (OnUpstreamError::Allow, _) => {
                "registry unreachable: the push passes unchecked (on_upstream_error = allow)\n".to_string()
            }
            (OnUpstreamError::Refuse, Mode::Enforce) => {
                "registry unreachable: the push is refused with 503 (on_upstream_error = refuse)\n"
                    .to_string()
            }
            (OnUpstreamError::Refuse, Mode::Audit) => format!("registry unreachable: the push {refused}\n"),
        };
        // Answered in audit mode too: a body past the buffer can be neither judged nor written.
        let too_large = format!(
            "size: a manifest over max_manifest_bytes ({}) is refused with 413",
            config.max_manifest_bytes
        );
        text += &match config.mode {
            Mode::Enforce => format!("{too_large}\n"),
            Mode::Audit => format!("{too_large}, in audit mode too\n"),
        };
        if config.pin_immutable_pulls {
            // What `filter::pull` checks: only a read surely of the tag's own manifest, from the
            // registry the filter's calls reach, is pinned.
            let under = match &config.upstream.authority {
                Some(a) => format!(" and is sent under :authority {a}"),
                None => String::new(),
            };
            text += &format!(
                "pull: a GET or HEAD whose Accept names all four stored manifest types (OCI manifest and index, \
Docker v2 manifest and list) and that has no query string{under} is sent to the registry by the digest the \
filter knows (pin_immutable_pulls); any other read goes as it came\n"
            );
        }
        text += &explain_break_glass(&config, &e);
    }
    out(&text);
    ExitCode::SUCCESS
}
