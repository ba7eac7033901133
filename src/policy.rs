//! The immutability policy: which `<repository>:<tag>` may never change, and why.
//!
//! Angos model: a `global` scope, and `repository` scopes that apply to a repository and every
//! repository below it (longest key wins). A scope's `immutable_tags` overrides the one above;
//! a non-empty exclusion list replaces the one above (not merged).
//!
//! Harbor/STACKIT/GitLab model: `rules` (see rules.rs). A tag is immutable when the scopes say
//! so OR any enabled rule selects it.

use crate::exclusions::{Exclusions, Match};
use crate::rules::{Rule, Rules};
use std::collections::HashMap;

#[derive(Debug, Clone, Default)]
pub struct Scope {
    pub immutable_tags: Option<bool>,
    /// `None` when the scope's list is absent or empty: the global list applies.
    pub exclusions: Option<Exclusions>,
}

#[derive(Debug, Clone, Default)]
pub struct Policy {
    pub global: Scope,
    /// Repository scopes, longest key first, so the first match is the most specific.
    pub repositories: Vec<(String, Scope)>,
    /// Signing tools' fallback tags (`sha256-<hex>[.sig|.att|.sbom]`) are rewritten on every
    /// signature; they stay mutable unless this is set.
    pub protect_signature_tags: bool,
    /// Rule lists; scope exclusions do not exempt a tag from them.
    pub rules: Rules,
    /// Index into `repositories` by key: finding a scope costs one lookup per path component
    /// of the repository, however many scopes there are.
    by_key: HashMap<String, usize>,
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
    pub fn new(global: Scope, mut repositories: Vec<(String, Scope)>, protect_signature_tags: bool) -> Policy {
        repositories.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        let by_key = repositories.iter().enumerate().map(|(i, (k, _))| (k.clone(), i)).collect();
        Policy { global, repositories, protect_signature_tags, rules: Rules::default(), by_key }
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
        let own = self.scope_for(repository).and_then(|(_, s)| s.immutable_tags);
        own.or(self.global.immutable_tags) == Some(true) || self.rules.may_select_repository(repository)
    }

    /// The scope of the longest key that is `repository` or one of its parents.
    fn scope_for(&self, repository: &str) -> Option<(&str, &Scope)> {
        let mut candidate = repository;
        loop {
            if let Some((k, s)) = self.by_key.get(candidate).and_then(|&i| self.repositories.get(i)) {
                return Some((k.as_str(), s));
            }
            candidate = candidate.rsplit_once('/')?.0;
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
        let scope = self.scope_for(repository);
        let (immutable, where_) = match scope.and_then(|(k, s)| s.immutable_tags.map(|v| (v, k))) {
            Some((v, key)) => (v, format!("repository.\"{key}\".immutable_tags")),
            None => match self.global.immutable_tags {
                Some(v) => (v, "global.immutable_tags".to_string()),
                None => return Decision::new(false, "no immutable_tags setting applies".into()),
            },
        };
        if !immutable {
            return Decision::new(false, format!("{where_} = false"));
        }
        if !self.protect_signature_tags && is_signature_tag(tag) {
            return Decision::new(false, "signature fallback tag (protect_signature_tags = false)".into());
        }
        let (list, list_where) = match scope.and_then(|(k, s)| s.exclusions.as_ref().map(|e| (e, k))) {
            Some((e, key)) => (Some(e), format!("repository.\"{key}\".immutable_tags_exclusions")),
            None => (self.global.exclusions.as_ref(), "global.immutable_tags_exclusions".to_string()),
        };
        match list.map(|l| l.matches(tag)) {
            Some(Match::Excluded(p)) => Decision::new(false, format!("{list_where} matches \"{p}\"")),
            Some(Match::Undecided(p)) => Decision::new(
                true,
                format!("{where_} = true (exclusion \"{p}\" could not be evaluated)"),
            ),
            _ => Decision::new(true, format!("{where_} = true")),
        }
    }
}

/// `sha256-<64 hex>` with an optional cosign suffix: `.sig`, `.att`, `.sbom`.
pub fn is_signature_tag(tag: &str) -> bool {
    let Some(rest) = tag.strip_prefix("sha256-") else {
        return false;
    };
    let hex = [".sig", ".att", ".sbom"]
        .iter()
        .find_map(|s| rest.strip_suffix(s))
        .unwrap_or(rest);
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
        assert!(Policy::new(scope(None), vec![("app".into(), scope(Some(true)))], false).may_protect_anything(), "one repository alone");
    }

    #[test]
    fn may_protect_in_follows_the_repository_scope() {
        let p = Policy::new(scope(None), vec![("prod".into(), scope(Some(true))), ("prod/dev".into(), scope(Some(false)))], false);
        assert!(p.may_protect_in("prod"));
        assert!(p.may_protect_in("prod/api"));
        assert!(!p.may_protect_in("prod/dev/x"));
        assert!(!p.may_protect_in("app"), "global unset");
        assert!(!p.may_protect_in("production"));
        let p = Policy::new(scope(Some(true)), vec![("dev".into(), scope(Some(false))), ("team".into(), scope(None))], false);
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
                 "rules": [{"name": "releases", "tags": {"regex": "^v\\d"}}, {"repositories": {"matching": "dev/**"}}]}"#,
        )
        .unwrap();
        let p = &c.policy;
        let hit = |repo: &str, tag: &str| p.matching_rule(repo, tag).map(|r| r.reason());
        assert_eq!(hit("app", "v1"), Some(r#"rule "releases" (rules[0])"#.into()), "the scope alone already decides");
        assert_eq!(hit("dev/x", "main"), Some("rules[1]".into()));
        assert_eq!(hit("dev/x", "v2"), Some(r#"rule "releases" (rules[0])"#.into()), "the first rule wins");
        assert_eq!(hit("app", "main"), None);
    }
}
