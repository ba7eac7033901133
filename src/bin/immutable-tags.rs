//! `immutable-tags explain`: asks the filter's own policy code whether `<repository>:<tag>` is
//! immutable under a configuration, and why, without deploying it.
//! `immutable-tags check`: validates policy files with the filter's own parser.
//!
//! Exit status: 0 when a decision was printed (every file is valid), 1 when a configuration
//! cannot be read or is invalid (with the line the filter would log), 2 on a usage error.

use immutable_tags::break_glass::{Action, Ask};
use immutable_tags::config::Config;
use immutable_tags::request::{is_valid_name, is_valid_tag};
use immutable_tags::BUILD;
use std::io::{Read, Write};
use std::process::ExitCode;

const USAGE: &str = "usage: immutable-tags explain --config <policy.json | -> [--as <principal>] [--reason <text>] <repository> <tag>
       immutable-tags explain --config <policy.json | -> [--as <principal>] [--reason <text>] <repository>:<tag>
       immutable-tags check <policy.json>...

Prints whether the tag is immutable under the configuration and the setting or rule that
decides it; `check` validates each file and prints its effective policy or its error. The
configuration is the filter's plugin configuration (JSON); `-` reads stdin. With `break_glass`,
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
            if let Some(why) = immutable_tags::exclusions::literal_prefix_warning(p) {
                found.push((format!("{scope}.immutable_tags_exclusions[{i}]"), format!("{p:?} {why}")));
            }
        }
    }
    found
}

/// `check FILE...`: every file through the filter's parser; 1 if any is unreadable or invalid.
fn check(files: &[String]) -> ExitCode {
    if files.is_empty() {
        eprintln!("immutable-tags: check needs at least one file\n{USAGE}");
        return ExitCode::from(2);
    }
    let mut ok = true;
    for path in files {
        match read_config(path).map(|b| Config::from_json(&b)) {
            Ok(Ok(c)) => {
                out(&format!("ok {path}: {}{}\n", c.summary(), break_glass_summary(&c)));
                for (field, why) in exclusion_warnings(&c) {
                    out(&format!("warning {path}: field `{field}`: {why}\n"));
                }
            }
            Ok(Err(why)) => {
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

/// `break_glass` as `check` prints it (not in `Config::summary`: the module logs that, and every
/// byte of the module counts).
fn break_glass_summary(c: &Config) -> String {
    let Some(b) = &c.break_glass else { return "; break_glass: off".into() };
    let repos = if b.repositories.is_empty() { "every repository".to_string() } else { b.repositories.join(", ") };
    let actions: Vec<&str> = b.actions.iter().map(|a| a.as_str()).collect();
    format!("; break_glass: principals [{}], repositories [{repos}], actions [{}], reason header {}", b.principals.join(", "), actions.join(", "), b.reason_header)
}

/// Who may override an immutable tag, and whether the given request would.
fn explain_break_glass(c: &Config, e: &Explain) -> String {
    let Some(b) = &c.break_glass else { return String::new() };
    let mut text = String::new();
    for action in [Action::Overwrite, Action::Delete] {
        let line = match (b.covers(action, &e.repository), &e.principal) {
            (Err(why), _) => format!("no {} override: {why}", action.as_str()),
            (Ok(()), None) => format!("{} may be overridden by {} with the {} header", action.as_str(), b.principals.join(", "), b.reason_header),
            (Ok(()), Some(p)) => {
                let ask = Ask { principal: Some(p), reason: e.reason.as_deref(), registry_auth: Some(true), verified: false };
                match b.grant(action, &e.repository, &ask) {
                    Ok(()) => format!("{} by {p}: overridden (once the registry authenticates {p} and accepts it)", action.as_str()),
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
    let verdict = if d.immutable {
        "immutable: a push of a different manifest is refused with 409"
    } else {
        "mutable: pushes pass unchecked"
    };
    let mut text = format!("{}:{}: {verdict}\nreason: {}\n", e.repository, e.tag, d.reason);
    if !policy.rules.is_empty() {
        text += &match policy.matching_rule(&e.repository, &e.tag) {
            Some(r) => format!("first matching rule: {}: {}\n", r.reason(), r.description()),
            None => format!("first matching rule: none of {} enabled\n", policy.rules.enabled()),
        };
    }
    if d.immutable {
        text += &explain_break_glass(&config, &e);
    }
    out(&text);
    ExitCode::SUCCESS
}
