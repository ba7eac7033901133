//! The immutability policy: which `<repository>:<tag>` may never change, and why.
//!
//! Angos model: a `global` scope, and `repository` scopes that apply to a repository and every
//! repository below it (longest key wins). A scope inherits each field it does not set
//! (`immutable_tags`, `immutable_tags_exclusions`) from the nearest enclosing scope that sets
//! it, then from `global`; a non-empty exclusion list replaces the inherited one (not merged).
//!
//! Harbor/STACKIT/GitLab model: `rules` (see rules.rs). A tag is immutable when the scopes say
//! so OR any enabled rule selects it.
//!
//! Its children are the pieces a policy is made of:
//!
//! * [`rules`]: Harbor / STACKIT / GitLab rule lists (repository and tag selectors).
//! * [`exclusions`]: Angos exclusion regexes, matched against the whole tag.
//! * [`pattern`]: sets of regexes compiled into one lazy DFA, shared by the two above.
//! * [`glob`]: doublestar globs translated into regexes (a port of globset's translation).

pub mod exclusions;
pub mod glob;
pub mod pattern;
pub mod rules;

use crate::policy::exclusions::{Exclusions, Match};
use crate::policy::rules::{Rule, Rules};
use std::collections::HashMap;

#[derive(Debug, Clone, Default)]
pub struct Scope {
    pub immutable_tags: Option<bool>,
    /// `None` when the scope's list is absent or empty: the enclosing scope's list applies.
    pub exclusions: Option<Exclusions>,
}

/// Where an inherited setting is written: `global`, or the scope at this index of
/// `Policy::repositories`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Origin {
    #[default]
    Global,
    Scope(usize),
}

/// A scope's effective settings, resolved once at load.
#[derive(Debug, Clone, Copy, Default)]
struct Resolved {
    immutable_tags: Option<Origin>,
    exclusions: Origin,
}

#[derive(Debug, Clone, Default)]
pub struct Policy {
    pub global: Scope,
    /// Repository scopes as written, longest key first, so the first match is the most specific.
    pub repositories: Vec<(String, Scope)>,
    /// Signing tools' fallback tags (`sha256-<hex>[.sig|.att|.sbom]`) are rewritten on every
    /// signature; they stay mutable unless this is set.
    pub protect_signature_tags: bool,
    /// Rule lists; scope exclusions do not exempt a tag from them.
    pub rules: Rules,
    /// Index into `repositories` by key: finding a scope costs one lookup per path component
    /// of the repository, however many scopes there are.
    by_key: HashMap<String, usize>,
    /// For each of `repositories`, where its effective fields are written.
    resolved: Vec<Resolved>,
}

/// See `Policy::origins`.
#[derive(Debug)]
pub struct Origins<'a> {
    pub scope: String,
    pub immutable_tags: Option<bool>,
    pub immutable_tags_from: String,
    pub exclusions: Option<&'a Exclusions>,
    pub exclusions_from: String,
}

/// A decision and the setting that made it, for the 409 body, the logs and `explain`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub immutable: bool,
    pub reason: String,
}

impl Decision {
    fn new(immutable: bool, reason: String) -> Self {
        Decision { immutable, reason }
    }
}

impl Policy {
    pub fn new(
        global: Scope,
        mut repositories: Vec<(String, Scope)>,
        protect_signature_tags: bool,
    ) -> Policy {
        repositories.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        let by_key = repositories.iter().enumerate().map(|(i, (k, _))| (k.clone(), i)).collect();
        let mut p = Policy {
            global,
            repositories,
            protect_signature_tags,
            rules: Rules::default(),
            by_key,
            resolved: Vec::new(),
        };
        // Each field from the scope itself or the nearest enclosing scope that sets it.
        p.resolved = p
            .repositories
            .iter()
            .map(|(key, _)| {
                let mut r = Resolved {
                    immutable_tags: p.global.immutable_tags.map(|_| Origin::Global),
                    exclusions: Origin::Global,
                };
                let (mut imm, mut exc) = (false, false);
                for i in p.enclosing(key) {
                    let s = p.repositories.get(i).map(|(_, s)| s);
                    if !imm && s.is_some_and(|s| s.immutable_tags.is_some()) {
                        (imm, r.immutable_tags) = (true, Some(Origin::Scope(i)));
                    }
                    if !exc && s.is_some_and(|s| s.exclusions.is_some()) {
                        (exc, r.exclusions) = (true, Origin::Scope(i));
                    }
                }
                r
            })
            .collect();
        p
    }

    pub fn with_rules(mut self, rules: Rules) -> Policy {
        self.rules = rules;
        self
    }

    /// Whether any tag at all can be immutable under this policy: lets the filter skip work.
    pub fn may_protect_anything(&self) -> bool {
        self.global.immutable_tags == Some(true)
            || self.repositories.iter().any(|(_, s)| s.immutable_tags == Some(true))
            || !self.rules.is_empty()
    }

    /// The first enabled rule that selects `repository:tag`, whatever the scopes say.
    pub fn matching_rule(&self, repository: &str, tag: &str) -> Option<&Rule> {
        self.rules.first_match(repository, tag)
    }

    /// Whether any tag of `repository` can be immutable: a repository that cannot hold one
    /// never pays for listing its tags on a delete by digest.
    pub fn may_protect_in(&self, repository: &str) -> bool {
        self.immutable_tags(self.scope_for(repository)).0 == Some(true)
            || self.rules.may_select_repository(repository)
    }

    /// The scopes that are `repository` or one of its parents, nearest first (indexes into
    /// `repositories`).
    fn enclosing<'a>(&'a self, repository: &'a str) -> impl Iterator<Item = usize> + 'a {
        let mut candidate = Some(repository);
        std::iter::from_fn(move || loop {
            let c = candidate?;
            candidate = c.rsplit_once('/').map(|(parent, _)| parent);
            if let Some(&i) = self.by_key.get(c) {
                return Some(i);
            }
        })
    }

    /// The scope of the longest key that is `repository` or one of its parents.
    fn scope_for(&self, repository: &str) -> Option<usize> {
        self.enclosing(repository).next()
    }

    /// The effective `immutable_tags` in scope `at` (`None`: global) and where it is written.
    fn immutable_tags(&self, at: Option<usize>) -> (Option<bool>, Origin) {
        match at.and_then(|i| self.resolved.get(i)) {
            None => (self.global.immutable_tags, Origin::Global),
            Some(r) => match r.immutable_tags {
                Some(o) => (self.scope_at(o).immutable_tags, o),
                None => (None, Origin::Global),
            },
        }
    }

    fn scope_at(&self, o: Origin) -> &Scope {
        match o {
            Origin::Scope(i) => self.repositories.get(i).map_or(&self.global, |(_, s)| s),
            Origin::Global => &self.global,
        }
    }

    fn name(&self, o: Origin) -> String {
        match o {
            Origin::Scope(i) => {
                self.repositories.get(i).map_or_else(String::new, |(k, _)| format!("repository.\"{k}\""))
            }
            Origin::Global => "global".into(),
        }
    }

    /// Which scope applies to `repository` and where each of its fields comes from (`explain`).
    pub fn trace(&self, repository: &str) -> String {
        let o = self.origins(repository);
        let immutable = if o.immutable_tags.is_some() {
            o.immutable_tags_from
        } else {
            "nowhere (unset: mutable)".into()
        };
        format!(
            "scope {}: immutable_tags from {immutable}, immutable_tags_exclusions from {}",
            o.scope, o.exclusions_from
        )
    }

    /// The scope that applies to `repository`, its effective settings and where each is
    /// written, as field paths (`global`, `repository."prod"`).
    pub fn origins(&self, repository: &str) -> Origins<'_> {
        let at = self.scope_for(repository);
        let (immutable_tags, imm) = self.immutable_tags(at);
        let exc = at.and_then(|i| self.resolved.get(i)).map_or(Origin::Global, |r| r.exclusions);
        Origins {
            scope: self.name(at.map_or(Origin::Global, Origin::Scope)),
            immutable_tags,
            immutable_tags_from: self.name(imm),
            exclusions: self.scope_at(exc).exclusions.as_ref(),
            exclusions_from: self.name(exc),
        }
    }

    pub fn decide(&self, repository: &str, tag: &str) -> Decision {
        let scoped = self.decide_scopes(repository, tag);
        if scoped.immutable || self.rules.is_empty() {
            return scoped;
        }
        match self.rules.first_match(repository, tag) {
            None => Decision::new(false, format!("{}; no rule matches", scoped.reason)),
            // The signature-tag default covers rules too: `"tags": {"matching": "**"}` must not
            // break signing.
            Some(_) if !self.protect_signature_tags && is_signature_tag(tag) => {
                Decision::new(false, "signature fallback tag (protect_signature_tags = false)".into())
            }
            Some(rule) => Decision::new(true, rule.reason()),
        }
    }

    /// The `global`/`repository` scopes' decision alone.
    fn decide_scopes(&self, repository: &str, tag: &str) -> Decision {
        let at = self.scope_for(repository);
        let (immutable, where_) = match self.immutable_tags(at) {
            (Some(v), o) => (v, format!("{}.immutable_tags", self.name(o))),
            (None, _) => return Decision::new(false, "no immutable_tags setting applies".into()),
        };
        if !immutable {
            return Decision::new(false, format!("{where_} = false"));
        }
        if !self.protect_signature_tags && is_signature_tag(tag) {
            return Decision::new(false, "signature fallback tag (protect_signature_tags = false)".into());
        }
        let o = at.and_then(|i| self.resolved.get(i)).map_or(Origin::Global, |r| r.exclusions);
        match self.scope_at(o).exclusions.as_ref().map(|l| l.matches(tag)) {
            Some(Match::Excluded(p)) => {
                Decision::new(false, format!("{}.immutable_tags_exclusions matches \"{p}\"", self.name(o)))
            }
            Some(Match::Undecided(p)) => {
                Decision::new(true, format!("{where_} = true (exclusion \"{p}\" could not be evaluated)"))
            }
            _ => Decision::new(true, format!("{where_} = true")),
        }
    }
}

/// `sha256-<64 hex>` with an optional cosign suffix: `.sig`, `.att`, `.sbom`.
pub fn is_signature_tag(tag: &str) -> bool {
    let Some(rest) = tag.strip_prefix("sha256-") else {
        return false;
    };
    let hex = [".sig", ".att", ".sbom"].iter().find_map(|s| rest.strip_suffix(s)).unwrap_or(rest);
    hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;
    // The same tests run on wasm32 under wasm-bindgen-test (Node.js).
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn scope(v: Option<bool>) -> Scope {
        Scope { immutable_tags: v, exclusions: None }
    }

    #[test]
    fn may_protect_anything_sees_each_source_of_immutability() {
        let none = Policy::new(scope(Some(false)), vec![("app".into(), scope(None))], false);
        assert!(!none.may_protect_anything());
        assert!(Policy::new(scope(Some(true)), Vec::new(), false).may_protect_anything(), "global alone");
        assert!(
            Policy::new(scope(None), vec![("app".into(), scope(Some(true)))], false).may_protect_anything(),
            "one repository alone"
        );
    }

    #[test]
    fn may_protect_in_follows_the_repository_scope() {
        let p = Policy::new(
            scope(None),
            vec![("prod".into(), scope(Some(true))), ("prod/dev".into(), scope(Some(false)))],
            false,
        );
        assert!(p.may_protect_in("prod"));
        assert!(p.may_protect_in("prod/api"));
        assert!(!p.may_protect_in("prod/dev/x"));
        assert!(!p.may_protect_in("app"), "global unset");
        assert!(!p.may_protect_in("production"));
        let p = Policy::new(
            scope(Some(true)),
            vec![("dev".into(), scope(Some(false))), ("team".into(), scope(None))],
            false,
        );
        assert!(p.may_protect_in("app"));
        assert!(!p.may_protect_in("dev/app"));
        assert!(p.may_protect_in("team/app"), "inherits global");
        for (repo, tag) in [("app", "v1"), ("dev/app", "v1"), ("team/x", "v1")] {
            assert!(p.may_protect_in(repo) || !p.decide(repo, tag).immutable, "{repo}");
        }
    }

    #[test]
    fn matching_rule_names_the_first_selecting_rule_whatever_the_scopes_say() {
        let c = crate::config::Config::from_json(
            br#"{"global": {"immutable_tags": true},
                 "rules": [{"name": "releases", "tags": {"regex": "^v\\d"}}, {"projects": "dev"}]}"#,
        )
        .unwrap();
        let p = &c.policy;
        let hit = |repo: &str, tag: &str| p.matching_rule(repo, tag).map(|r| r.reason());
        assert_eq!(
            hit("app", "v1"),
            Some(r#"rule "releases" (rules[0])"#.into()),
            "the scope alone already decides"
        );
        assert_eq!(hit("dev/x", "main"), Some("rules[1]".into()));
        assert_eq!(hit("dev/x", "v2"), Some(r#"rule "releases" (rules[0])"#.into()), "the first rule wins");
        assert_eq!(hit("app", "main"), None);
    }
}

/// Issue 30: the seeds' own examples, and nested scopes that inherit.
#[cfg(test)]
mod seeds {
    use crate::config::Config;
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn cfg(json: &str) -> Config {
        Config::from_json(json.as_bytes()).unwrap()
    }

    /// The same table tests/explain.rs runs through `explain`.
    #[test]
    fn the_seeds_documented_examples_decide_as_the_seeds_say() {
        let table: serde_json::Value =
            serde_json::from_str(include_str!("../../tests/seed_examples.json")).unwrap();
        let mut n = 0;
        for entry in table.as_array().unwrap() {
            let seed = entry["seed"].as_str().unwrap();
            let c = Config::from_json(entry["policy"].to_string().as_bytes())
                .unwrap_or_else(|e| panic!("{seed}: {e}"));
            for case in entry["cases"].as_array().unwrap() {
                let (reference, want) = (case[0].as_str().unwrap(), case[1].as_bool().unwrap());
                let (repo, tag) = reference.rsplit_once(':').unwrap();
                let d = c.policy.decide(repo, tag);
                assert_eq!(d.immutable, want, "{seed}: {reference}: {}", d.reason);
                assert!(
                    !want || c.policy.may_protect_in(repo),
                    "{seed}: {reference}: may_protect_in fails open"
                );
                n += 1;
            }
        }
        assert!(n > 100, "{n} cases");
    }

    #[test]
    fn a_nested_scope_inherits_immutable_tags_from_the_nearest_enclosing_scope() {
        let c = cfg(
            r#"{"repository": {"prod": {"immutable_tags": true}, "prod/legacy": {"immutable_tags_exclusions": ["^latest$"]}}}"#,
        );
        let d = c.policy.decide("prod/legacy/app", "v1.0.0");
        assert_eq!(d.reason, r#"repository."prod".immutable_tags = true"#);
        assert!(d.immutable);
        assert!(c.policy.may_protect_in("prod/legacy/app"), "deletes must check its tags");
        assert!(c.policy.may_protect_in("prod/legacy"));
        let d = c.policy.decide("prod/legacy/app", "latest");
        assert_eq!(
            (d.immutable, d.reason.as_str()),
            (false, r#"repository."prod/legacy".immutable_tags_exclusions matches "^latest$""#)
        );
        // Off above, nothing set below: off (with global on, this is refused at load: see
        // config.rs `policy_review_tests`).
        let c = cfg(
            r#"{"global": {"immutable_tags": false}, "repository": {"dev": {"immutable_tags": false}, "dev/keep": {"immutable_tags_exclusions": ["^x$"]}}}"#,
        );
        assert_eq!(c.policy.decide("dev/keep/a", "v1").reason, r#"repository."dev".immutable_tags = false"#);
        assert!(!c.policy.may_protect_in("dev/keep/a"));
    }

    #[test]
    fn a_nested_scope_inherits_exclusions_from_the_nearest_enclosing_scope() {
        let c = cfg(r#"{"global": {"immutable_tags": true, "immutable_tags_exclusions": ["^g$"]},
            "repository": {"team": {"immutable_tags_exclusions": ["^t$"]}, "team/a": {"immutable_tags": true}, "team/a/b": {}}}"#);
        let d = c.policy.decide("team/a/b/c", "t");
        assert_eq!(
            (d.immutable, d.reason.as_str()),
            (false, r#"repository."team".immutable_tags_exclusions matches "^t$""#)
        );
        assert!(c.policy.decide("team/a/b/c", "g").immutable, "the global list is replaced, not merged");
        assert!(c.policy.decide("other", "t").immutable);
        assert!(!c.policy.decide("other", "g").immutable);
        assert_eq!(
            c.policy.trace("team/a/b/c"),
            r#"scope repository."team/a/b": immutable_tags from repository."team/a", immutable_tags_exclusions from repository."team""#
        );
        assert_eq!(
            c.policy.trace("other"),
            "scope global: immutable_tags from global, immutable_tags_exclusions from global"
        );
    }
}

/// Nothing fails open: whatever the nesting of scopes and the projects of rules, a repository
/// holding an immutable tag is one whose digest deletes are checked.
#[cfg(all(test, not(target_arch = "wasm32")))]
mod nesting_properties {
    use crate::config::Config;
    use proptest::prelude::*;

    fn setting() -> impl Strategy<Value = String> {
        (
            prop::option::of(any::<bool>()),
            prop::option::of(prop::sample::select(vec!["^v1$", "^latest$", ".*", "^x.*"])),
        )
            .prop_map(|(imm, exc)| {
                let mut f = Vec::new();
                if let Some(v) = imm {
                    f.push(format!(r#""immutable_tags": {v}"#));
                }
                if let Some(e) = exc {
                    f.push(format!(r#""immutable_tags_exclusions": ["{e}"]"#));
                }
                format!("{{{}}}", f.join(", "))
            })
    }

    fn rule() -> impl Strategy<Value = String> {
        let projects = prop::sample::select(vec![
            "",
            r#""projects": "a", "#,
            r#""projects": "*", "#,
            r#""projects": {"excluding": "a"}, "#,
        ]);
        let repos = prop::sample::select(vec![
            "",
            r#""repositories": {"matching": "*"}, "#,
            r#""repositories": {"matching": "b"}, "#,
        ]);
        let tags =
            prop::sample::select(vec![r#""tags": {"matching": "v*"}"#, r#""tags": {"excluding": "latest"}"#]);
        (projects, repos, tags).prop_map(|(p, r, t)| format!("{{{p}{r}{t}}}"))
    }

    proptest! {
        #![proptest_config(crate::proptests::cases(500))]
        #[test]
        fn an_immutable_tag_is_in_a_repository_that_may_protect(
            global in setting(),
            scopes in prop::collection::btree_map(prop::sample::select(vec!["a", "a/b", "a/b/c", "b", "a/c"]), setting(), 0..5),
            rules in prop::collection::vec(rule(), 0..3),
            repo in prop::sample::select(vec!["a", "a/b", "a/b/c", "a/b/c/d", "b", "b/x", "a/c/x", "c"]),
            tag in prop::sample::select(vec!["v1", "latest", "x1", "main"]),
        ) {
            let scopes: Vec<String> = scopes.iter().map(|(k, v)| format!(r#""{k}": {v}"#)).collect();
            let json = format!(r#"{{"global": {global}, "repository": {{{}}}, "rules": [{}]}}"#, scopes.join(", "), rules.join(", "));
            let c = Config::from_json(json.as_bytes());
            // A scope that would lose global's protection by inheriting is refused at load.
            prop_assume!(!c.as_ref().is_err_and(crate::config::ConfigError::is_lost_global_protection));
            prop_assert!(c.is_ok(), "{} -> {:?}", json, c.err());
            let Ok(c) = c else { return Ok(()) };
            let d = c.policy.decide(repo, tag);
            prop_assert!(!d.immutable || c.policy.may_protect_in(repo), "{}: {}:{} {}", json, repo, tag, d.reason);
            prop_assert!(!d.immutable || c.policy.may_protect_anything());
        }
    }
}
