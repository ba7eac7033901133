//! Rule lists, the way Harbor, STACKIT and GitLab express immutability: a tag is immutable when
//! any enabled rule selects both its repository and the tag itself.
//!
//! Selectors take doublestar globs (`matching`/`excluding`) or, for tags, an unanchored RE2-style
//! regex (`regex`). Regexes are compiled without Unicode classes: as in RE2, `\d`, `\w` and `\s`
//! are ASCII (tags are ASCII anyway), which also keeps a set of a thousand of them small.
//!
//! Each glob is translated into a regex (glob.rs); every pattern of every rule is then compiled
//! at load into two lazy DFAs (pattern.rs): one of the repository globs, one of the tag globs
//! and regexes. So a decision is one pass over the repository and one over the tag,
//! then work in proportion to the patterns that matched: not to the number of rules. (Matching
//! with `globset` and `regex::RegexSet` instead pulled their engines and Unicode tables into
//! the module, more than doubling its size.)

use crate::policy::glob;
use crate::policy::pattern::{Matcher, Unfinished};
use crate::util::json_doc::ConfigError;
use crate::util::json_doc::{Fields, Json};

/// Longest `regex` accepted (characters) unless `rules_max_regex_length` says otherwise.
/// GitLab allows 100; long patterns are rarely honest and cost memory in the set.
pub const DEFAULT_MAX_REGEX_LENGTH: usize = 256;
/// Upper bound of `rules_max_regex_length` itself.
pub const MAX_REGEX_LENGTH_LIMIT: usize = 10_000;

/// One entry of `rules` as written.
pub(crate) struct RawRule {
    name: Option<String>,
    disabled: bool,
    /// With `true` when written as a plain glob list (the field is then `projects` itself).
    projects: Option<(RawRepositories, bool)>,
    repositories: Option<RawRepositories>,
    tags: Option<RawTags>,
}

struct RawRepositories {
    matching: Option<Patterns>,
    excluding: Option<Patterns>,
}

struct RawTags {
    matching: Option<Patterns>,
    excluding: Option<Patterns>,
    regex: Option<String>,
}

/// A `matching`/`excluding` value: one string or an array of strings.
struct Patterns {
    values: Vec<String>,
    is_array: bool,
}

impl Patterns {
    fn read(f: &Fields<'_>, name: &str) -> Result<Option<Patterns>, ConfigError> {
        match f.get(name) {
            None => Ok(None),
            Some(Json::Str(v)) => Ok(Some(Patterns { values: vec![v.clone()], is_array: false })),
            Some(v @ Json::Array(_)) => {
                Ok(Some(Patterns { values: v.strings(&f.at(name))?, is_array: true }))
            }
            Some(v) => Err(
                v.invalid_type(&f.at(name), "a glob, a comma-separated string of globs, or an array of them")
            ),
        }
    }
}

impl RawRule {
    /// The `rules` array as written.
    pub(crate) fn read_all(v: &Json, at: &str) -> Result<Vec<RawRule>, ConfigError> {
        let Json::Array(items) = v else {
            return Err(v.invalid_type(at, "a sequence"));
        };
        items.iter().enumerate().map(|(i, item)| RawRule::read(item, &format!("{at}[{i}]"))).collect()
    }

    fn read(v: &Json, at: &str) -> Result<RawRule, ConfigError> {
        let f = v.fields(at, &["name", "disabled", "projects", "repositories", "tags"])?;
        // `projects`: a glob list (`matching`), or the same object as `repositories`.
        let projects = match f.get("projects") {
            None => None,
            Some(Json::Object(_)) => {
                let p = f
                    .get("projects")
                    .map(|p| p.fields(&f.at("projects"), &["matching", "excluding"]))
                    .transpose()?;
                p.map(|p| {
                    Ok::<_, ConfigError>((
                        RawRepositories {
                            matching: Patterns::read(&p, "matching")?,
                            excluding: Patterns::read(&p, "excluding")?,
                        },
                        false,
                    ))
                })
                .transpose()?
            }
            Some(_) => {
                Some((RawRepositories { matching: Patterns::read(&f, "projects")?, excluding: None }, true))
            }
        };
        let repositories = match f.get("repositories") {
            None => None,
            Some(r) => {
                let r = r.fields(&f.at("repositories"), &["matching", "excluding"])?;
                Some(RawRepositories {
                    matching: Patterns::read(&r, "matching")?,
                    excluding: Patterns::read(&r, "excluding")?,
                })
            }
        };
        let tags = match f.get("tags") {
            None => None,
            Some(t) => {
                let t = t.fields(&f.at("tags"), &["matching", "excluding", "regex"])?;
                Some(RawTags {
                    matching: Patterns::read(&t, "matching")?,
                    excluding: Patterns::read(&t, "excluding")?,
                    regex: t.opt_string("regex")?,
                })
            }
        };
        Ok(RawRule {
            name: f.opt_string("name")?,
            disabled: f.bool_or_false("disabled")?,
            projects,
            repositories,
            tags,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Select {
    /// No selector: everything.
    Any,
    /// Selected when one of the selector's patterns matches.
    Matching,
    /// Selected when none of the selector's patterns matches.
    Excluding,
}

/// An enabled rule, compiled.
#[derive(Debug, Clone)]
pub struct Rule {
    index: usize,
    name: Option<String>,
    /// Harbor's project: the first path component. `Any`: every repository, with or without one.
    projects: Select,
    repositories: Select,
    tags: Select,
    description: String,
    /// Its patterns' IDs in `Rules::project_set`, `Rules::repo_set` and `Rules::tag_set`.
    project_ids: Vec<usize>,
    repo_ids: Vec<usize>,
    tag_ids: Vec<usize>,
}

impl Rule {
    /// Position in the configured `rules` array.
    pub fn index(&self) -> usize {
        self.index
    }

    /// Names the rule for the 409's `reason` and the logs: `rule "<name>" (rules[i])`, or
    /// `rules[i]` when unnamed.
    pub fn reason(&self) -> String {
        match &self.name {
            Some(n) => format!("rule {} (rules[{}])", quoted(n), self.index),
            None => format!("rules[{}]", self.index),
        }
    }

    /// The rule's selectors as configured, e.g. `repositories matching ["**"], tags regex "^v"`.
    pub fn description(&self) -> &str {
        &self.description
    }
}

/// Every enabled rule, compiled into sets.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    /// Enabled rules in configuration order; "position" below means an index into this.
    rules: Vec<Rule>,
    disabled: usize,
    /// The distinct project globs of every enabled rule.
    project_set: Option<Matcher>,
    /// For each pattern of `project_set`, the rules (positions, ascending) that are candidates
    /// when it hits: those whose `projects` are all literal names (Harbor allows 15 rules per
    /// project, so these lists stay short however many projects there are).
    project_candidates: Vec<Vec<usize>>,
    /// The distinct repository globs of every enabled rule (`None`: there are none).
    repo_set: Option<Matcher>,
    /// For each pattern of `repo_set`, the rules (positions, ascending) that select
    /// repositories `matching` it: a hit makes them candidates.
    repo_candidates: Vec<Vec<usize>>,
    /// The distinct tag globs and tag regexes of every enabled rule.
    tag_set: Option<Matcher>,
    /// For each pattern of `tag_set`, the rules selecting tags with it that have no
    /// repository `matching` (those with one are candidates through `repo_candidates`).
    tag_candidates: Vec<Vec<usize>>,
    /// Positions of the rules with no `matching`/`regex` selector, in order: they match unless
    /// one of their exclusions hits.
    without_matching: Vec<usize>,
}

impl Rules {
    /// Compiles the `rules` array; errors name the field (`rules[2].tags.regex`) and value.
    pub(crate) fn compile(raw: Vec<RawRule>, max_regex_length: usize) -> Result<Rules, ConfigError> {
        let mut out = Rules::default();
        let mut repo_patterns = Distinct::default();
        let mut project_patterns = Distinct::default();
        let mut tag_patterns = Distinct::default();
        for (index, rule) in raw.into_iter().enumerate() {
            let at = format!("rules[{index}]");
            if let Some(n) = &rule.name {
                if n.trim().is_empty() || n.chars().any(char::is_control) || n.chars().count() > 200 {
                    return Err(err(
                        format!("{at}.name"),
                        quoted(n),
                        "must be 1 to 200 characters without control characters",
                    ));
                }
            }
            // Validated even when disabled: enabling a rule later must not reveal a bad pattern.
            let position = out.rules.len();
            let mut description = Vec::new();
            let (mut project_ids, mut repo_ids, mut tag_ids) = (Vec::new(), Vec::new(), Vec::new());
            let mut literal_projects = false;
            let projects = match rule.projects {
                None => Select::Any,
                Some((r, plain)) => {
                    let at = format!("{at}.projects");
                    let (select, key, patterns) = one_of(&at, r.matching, r.excluding, None)?;
                    let patterns = patterns.unwrap_or(Patterns { values: Vec::new(), is_array: false });
                    let field = if plain { at.clone() } else { format!("{at}.{key}") };
                    literal_projects =
                        patterns.values.iter().all(|v| !v.contains(['*', '?', '[', '{', '\\']));
                    let globs = compile_globs(&field, &patterns)?;
                    if let Some((g, _)) = globs.iter().find(|(g, _)| g.contains('/')) {
                        return Err(err(
                            field,
                            quoted(g),
                            "a project is one path component (the first of the name): no `/`",
                        ));
                    }
                    description.push(format!("projects {key} {}", list(&globs)));
                    if !rule.disabled {
                        project_ids = globs.into_iter().map(|(_, re)| project_patterns.id(re)).collect();
                    }
                    select
                }
            };
            let repositories = match rule.repositories {
                None => Select::Any,
                Some(r) => {
                    let at = format!("{at}.repositories");
                    let (select, key, patterns) = one_of(&at, r.matching, r.excluding, None)?;
                    let Some(patterns) = patterns else {
                        return Err(err(at, "", "`regex` is only for tags"));
                    };
                    if projects == Select::Any {
                        ambiguous_without_projects(&format!("{at}.{key}"), select, &patterns)?;
                    }
                    let globs = compile_globs(&format!("{at}.{key}"), &patterns)?;
                    description.push(format!("repositories {key} {}", list(&globs)));
                    if !rule.disabled {
                        repo_ids = globs.into_iter().map(|(_, re)| repo_patterns.id(re)).collect();
                    }
                    select
                }
            };
            let tags = match rule.tags {
                None => Select::Any,
                Some(t) => {
                    let at = format!("{at}.tags");
                    let (select, key, patterns) = one_of(&at, t.matching, t.excluding, t.regex.as_ref())?;
                    match patterns {
                        Some(patterns) => {
                            let globs = compile_globs(&format!("{at}.{key}"), &patterns)?;
                            description.push(format!("tags {key} {}", list(&globs)));
                            if !rule.disabled {
                                tag_ids = globs.into_iter().map(|(_, re)| tag_patterns.id(re)).collect();
                            }
                        }
                        None => {
                            let re = t.regex.unwrap_or_default();
                            check_regex(&format!("{at}.regex"), &re, max_regex_length)?;
                            description.push(format!("tags regex {}", quoted(&re)));
                            if !rule.disabled {
                                tag_ids = vec![tag_patterns.id(re)];
                            }
                        }
                    }
                    select
                }
            };
            if rule.disabled {
                out.disabled += 1;
                continue;
            }
            project_ids.sort_unstable();
            project_ids.dedup();
            repo_ids.sort_unstable();
            repo_ids.dedup();
            tag_ids.sort_unstable();
            tag_ids.dedup();
            if projects == Select::Matching && literal_projects {
                candidate(&mut out.project_candidates, &project_ids, position);
            } else if repositories == Select::Matching {
                candidate(&mut out.repo_candidates, &repo_ids, position);
            } else if tags == Select::Matching {
                candidate(&mut out.tag_candidates, &tag_ids, position);
            } else {
                out.without_matching.push(position);
            }
            let description = if description.is_empty() {
                "every tag of every repository".to_string()
            } else {
                description.join(", ")
            };
            out.rules.push(Rule {
                index,
                name: rule.name,
                projects,
                repositories,
                tags,
                description,
                project_ids,
                repo_ids,
                tag_ids,
            });
        }
        let set = |what: &str, patterns: &[String]| match patterns {
            [] => Ok(None),
            _ => Matcher::all(patterns)
                .map(Some)
                .map_err(|e| err("rules", "", format!("the rules' {what} do not compile together: {e}"))),
        };
        out.project_set = set("project globs", &project_patterns.patterns)?;
        out.repo_set = set("repository globs", &repo_patterns.patterns)?;
        out.tag_set = set("tag globs and regexes", &tag_patterns.patterns)?;
        Ok(out)
    }

    /// Whether any rule is enabled.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The enabled rules in configuration order (`immutable-tags check` lists them).
    pub fn iter(&self) -> impl Iterator<Item = &Rule> {
        self.rules.iter()
    }

    pub fn enabled(&self) -> usize {
        self.rules.len()
    }

    pub fn disabled(&self) -> usize {
        self.disabled
    }

    /// Whether some enabled rule selects `repository` (for some tag): a repository no rule
    /// selects never needs a tag listing on a digest delete.
    pub fn may_select_repository(&self, repository: &str) -> bool {
        let Ok(hits) = self.repository_hits(repository) else {
            return true; // the safe side: the caller then checks the tags
        };
        self.rules.iter().any(|rule| hits.select(rule))
    }

    /// The project and repository patterns that `repository` hits. Harbor matches a rule's
    /// repositories against the name below the project (its first component); a name of one
    /// component has no project and is matched whole.
    fn repository_hits(&self, repository: &str) -> Result<RepositoryHits, Unfinished> {
        let (project, below) = match repository.split_once('/') {
            Some((p, below)) => (Some(set_hits(&self.project_set, p)?), below),
            None => (None, repository),
        };
        Ok(RepositoryHits { project, repo: set_hits(&self.repo_set, below)? })
    }

    /// The first enabled rule (in configuration order) that selects `repository:tag`.
    pub fn first_match(&self, repository: &str, tag: &str) -> Option<&Rule> {
        if self.rules.is_empty() {
            return None;
        }
        let (Ok(repo), Ok(tag_hits)) = (self.repository_hits(repository), set_hits(&self.tag_set, tag))
        else {
            // The matcher could not finish (pattern.rs: not as configured): the safe side is
            // an immutable tag, so the first rule answers.
            return self.rules.first();
        };
        let selects = |position: usize| {
            self.rules
                .get(position)
                .is_some_and(|rule| repo.select(rule) && selected(rule.tags, &rule.tag_ids, &tag_hits))
        };
        // A rule with a `matching`/`regex` selector can only match if one of its patterns hit:
        // the candidates are the owners of the patterns that hit. Each list is in order, so
        // only its first rule that selects counts; the rules it skips were refused by their
        // other selector.
        let mut best: Option<usize> = None;
        let lists = repo
            .repo
            .iter()
            .filter_map(|&id| self.repo_candidates.get(id))
            .chain(repo.project.iter().flatten().filter_map(|&id| self.project_candidates.get(id)))
            .chain(tag_hits.iter().filter_map(|&id| self.tag_candidates.get(id)));
        for list in lists {
            let mut before_best = list.iter().copied().take_while(|&p| best.map_or(true, |b| p < b));
            if let Some(p) = before_best.find(|&p| selects(p)) {
                best = Some(p);
            }
        }
        // Every rule this skips was hit by one of its exclusions.
        let unhit = self
            .without_matching
            .iter()
            .copied()
            .take_while(|&p| best.map_or(true, |b| p < b))
            .find(|&p| selects(p));
        self.rules.get(unhit.or(best)?)
    }
}

/// What a repository hit: project patterns (`None`: the name has no project), repository ones.
struct RepositoryHits {
    project: Option<Vec<usize>>,
    repo: Vec<usize>,
}

impl RepositoryHits {
    /// Whether `rule` selects the repository (for some tag). A name without a project is
    /// selected by no `projects` `matching`, and by every `excluding`.
    fn select(&self, rule: &Rule) -> bool {
        let project = match &self.project {
            Some(hits) => selected(rule.projects, &rule.project_ids, hits),
            None => rule.projects != Select::Matching,
        };
        project && selected(rule.repositories, &rule.repo_ids, &self.repo)
    }
}

/// A rule without `projects` whose repository selector meant something else when rules matched
/// the whole name: refused rather than silently protecting less (docs/policy.md "Rules", migrating).
/// A `matching` glob that cannot match a `/` only selects more now (`**` as before, `*` or `app`
/// also below every project); one that can (a `/`, a negated class, a range spanning `/`), or any
/// `excluding` (which now also spares `<project>/<glob>`), could select less.
fn ambiguous_without_projects(at: &str, select: Select, patterns: &Patterns) -> Result<(), ConfigError> {
    let nested = patterns.values.iter().enumerate().find(|(_, v)| {
        split_top_level(v).into_iter().map(str::trim).any(|g| g != "**" && glob::can_match_slash(g))
    });
    let (field, value) = match (select, nested) {
        (Select::Excluding, _) => (at.to_string(), patterns.values.join(",")),
        (_, Some((i, v))) => {
            (if patterns.is_array { format!("{at}[{i}]") } else { at.to_string() }, v.clone())
        }
        _ => return Ok(()),
    };
    Err(err(
        field,
        quoted(&value),
        "repositories match the name below the project, as in Harbor (in lib/a/b the project is lib): \
         add \"projects\" so this rule cannot silently protect less (\"projects\": \"team-a\" with \"**\" \
         for what \"team-a/**\" matched before; \"projects\": \"*\" for this selector below every project)",
    ))
}

/// Whether a selector with these patterns selects, given the patterns that hit (sorted).
fn selected(select: Select, ids: &[usize], hits: &[usize]) -> bool {
    let hit = || ids.iter().any(|id| hits.binary_search(id).is_ok());
    match select {
        Select::Any => true,
        Select::Matching => hit(),
        Select::Excluding => !hit(),
    }
}

/// Adds `position` to the candidates of each pattern in `ids`.
fn candidate(lists: &mut Vec<Vec<usize>>, ids: &[usize], position: usize) {
    for &id in ids {
        if lists.len() <= id {
            lists.resize_with(id + 1, Vec::new);
        }
        if let Some(list) = lists.get_mut(id) {
            list.push(position);
        }
    }
}

/// Patterns compiled once however many rules use them (a thousand rules on `v*` are one
/// pattern in the DFA, which then reports one hit, not a thousand).
#[derive(Default)]
struct Distinct {
    patterns: Vec<String>,
    ids: std::collections::HashMap<String, usize>,
}

impl Distinct {
    fn id(&mut self, pattern: String) -> usize {
        let next = self.patterns.len();
        let id = *self.ids.entry(pattern.clone()).or_insert(next);
        if id == next {
            self.patterns.push(pattern);
        }
        id
    }
}

/// The IDs of the patterns of `set` that match `s`, sorted (`Err`: the matcher could not
/// finish).
fn set_hits(set: &Option<Matcher>, s: &str) -> Result<Vec<usize>, Unfinished> {
    let Some(set) = set else { return Ok(Vec::new()) };
    let mut v = set.every_match(s)?;
    v.sort_unstable();
    Ok(v)
}

type Chosen = (Select, &'static str, Option<Patterns>);

/// Exactly one of `matching`, `excluding`, `regex`. `None` patterns: it is the regex.
fn one_of(
    at: &str,
    matching: Option<Patterns>,
    excluding: Option<Patterns>,
    regex: Option<&String>,
) -> Result<Chosen, ConfigError> {
    match (matching, excluding, regex) {
        (Some(m), None, None) => Ok((Select::Matching, "matching", Some(m))),
        (None, Some(e), None) => Ok((Select::Excluding, "excluding", Some(e))),
        (None, None, Some(_)) => Ok((Select::Matching, "regex", None)),
        _ => {
            let want = if at.ends_with(".tags") {
                "`matching`, `excluding` or `regex`"
            } else {
                "`matching` or `excluding`"
            };
            Err(err(at, "", format!("give exactly one of {want} (omit the selector to select everything)")))
        }
    }
}

/// Splits every string at top-level commas and translates each glob into a whole-string regex:
/// (glob, regex).
fn compile_globs(at: &str, patterns: &Patterns) -> Result<Vec<(String, String)>, ConfigError> {
    if patterns.values.is_empty() {
        return Err(err(at, "[]", "give at least one pattern (omit the selector to select everything)"));
    }
    let mut out = Vec::new();
    for (i, value) in patterns.values.iter().enumerate() {
        let field = if patterns.is_array { format!("{at}[{i}]") } else { at.to_string() };
        for item in split_top_level(value) {
            let item = item.trim();
            if item.is_empty() {
                return Err(err(field, quoted(value), "empty pattern (a stray comma?)"));
            }
            let re = glob::to_regex(item)
                .map_err(|e| err(&field, quoted(value), format!("invalid glob {}: {e}", quoted(item))))?;
            // `(?s)`: `**` crosses everything, as it did under globset's matcher.
            out.push((item.to_string(), format!("(?s){re}")));
        }
    }
    Ok(out)
}

fn list(globs: &[(String, String)]) -> String {
    let items: Vec<String> = globs.iter().map(|(s, _)| quoted(s)).collect();
    format!("[{}]", items.join(", "))
}

fn check_regex(at: &str, re: &str, max: usize) -> Result<(), ConfigError> {
    let len = re.chars().count();
    if len == 0 {
        return Err(err(at, "\"\"", "empty regex (use \".*\" to select every tag)"));
    }
    if len > max {
        return Err(err(
            at,
            quoted(re),
            format!("{len} characters, longer than rules_max_regex_length ({max})"),
        ));
    }
    Matcher::all(std::slice::from_ref(&re.to_string()))
        .map_err(|e| err(at, quoted(re), format!("invalid regular expression: {e}")))?;
    Ok(())
}

/// Splits at commas outside `{...}` and `[...]` (and not escaped), so the Harbor/STACKIT
/// comma list `rc,test,nightly` is three globs while `v{1,2}.*` stays one.
pub fn split_top_level(s: &str) -> Vec<&str> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let (mut start, mut depth, mut i) = (0, 0usize, 0);
    // Inside a class, the position after which `]` closes it (a `]` first is literal).
    let mut class_from: Option<usize> = None;
    while let Some(&c) = b.get(i) {
        if c == b'\\' {
            i += 2;
            continue;
        }
        if let Some(from) = class_from {
            if c == b']' && i > from {
                class_from = None;
            }
            i += 1;
            continue;
        }
        match c {
            b'[' => {
                let negated = matches!(b.get(i + 1), Some(b'!' | b'^'));
                class_from = Some(i + 1 + usize::from(negated));
            }
            b'{' => depth += 1,
            b'}' => depth = depth.saturating_sub(1),
            b',' if depth == 0 => {
                out.push(s.get(start..i).unwrap_or_default());
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    out.push(s.get(start..).unwrap_or_default());
    out
}

fn err(field: impl Into<String>, value: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError { field: field.into(), value: value.into(), reason: reason.into() }
}

fn quoted(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    // The same tests run on wasm32 under wasm-bindgen-test (Node.js).
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    /// These tests were written when repository globs matched the whole name: each rule with a
    /// `repositories` selector runs below every project (`"projects": "*"`), and `hit` asks
    /// about `p/<repo>`, so the globs mean what they meant.
    fn try_rules(json: &str) -> Result<Rules, ConfigError> {
        let mut v: serde_json::Value = serde_json::from_str(json).unwrap();
        for rule in v.as_array_mut().unwrap() {
            let o = rule.as_object_mut().unwrap();
            if o.contains_key("repositories") && !o.contains_key("projects") {
                o.insert("projects".into(), "*".into());
            }
        }
        let raw = RawRule::read_all(&Json::parse(v.to_string().as_bytes()).unwrap(), "rules").unwrap();
        Rules::compile(raw, DEFAULT_MAX_REGEX_LENGTH)
    }
    fn rules(json: &str) -> Rules {
        try_rules(json).unwrap()
    }
    fn hit(r: &Rules, repo: &str, tag: &str) -> Option<usize> {
        r.first_match(&format!("p/{repo}"), tag).map(Rule::index)
    }

    #[test]
    fn split_keeps_braces_and_classes_together() {
        assert_eq!(split_top_level("rc,test,nightly"), ["rc", "test", "nightly"]);
        assert_eq!(split_top_level("v{1,2}.*,latest"), ["v{1,2}.*", "latest"]);
        assert_eq!(split_top_level("{a,{b,c}},d"), ["{a,{b,c}}", "d"]);
        assert_eq!(split_top_level("[,],x"), ["[,]", "x"]);
        assert_eq!(split_top_level("[],x],y"), ["[],x]", "y"], "a leading ] is literal in a class");
        assert_eq!(split_top_level("[!],x],y"), ["[!],x]", "y"]);
        assert_eq!(split_top_level(r"a\,b,c"), [r"a\,b", "c"]);
        assert_eq!(split_top_level("one"), ["one"]);
        assert_eq!(split_top_level("a,"), ["a", ""]);
        assert_eq!(split_top_level("{a,b"), ["{a,b"], "unclosed: left for the glob compiler to refuse");
    }

    #[test]
    fn seed_examples_harbor_and_stackit() {
        // All tags of all repositories.
        let r = rules(r#"[{"repositories": {"matching": "**"}, "tags": {"matching": "**"}}]"#);
        assert_eq!(hit(&r, "app", "v1"), Some(0));
        assert_eq!(hit(&r, "team/a/b", "latest"), Some(0));
        // Everything except rc, test, nightly.
        let r = rules(r#"[{"repositories": {"matching": "**"}, "tags": {"excluding": "rc,test,nightly"}}]"#);
        assert_eq!(hit(&r, "team/app", "v1"), Some(0));
        for t in ["rc", "test", "nightly"] {
            assert_eq!(hit(&r, "team/app", t), None, "{t}");
        }
        assert_eq!(hit(&r, "team/app", "rc1"), Some(0), "the globs are whole-tag");
        // Release tags only.
        let r = rules(r#"[{"repositories": {"matching": "**"}, "tags": {"matching": "v*.*.*"}}]"#);
        assert_eq!(hit(&r, "app", "v1.2.3"), Some(0));
        assert_eq!(hit(&r, "app", "v1.2.3-rc1"), Some(0), "`*` is any sequence, as in Harbor");
        assert_eq!(hit(&r, "app", "v1.2"), None);
        assert_eq!(hit(&r, "app", "latest"), None);
    }

    #[test]
    fn repository_selection_alone() {
        let r = rules(
            r#"[{"repositories": {"matching": "team-a/**"}, "tags": {"matching": "v*"}},
                          {"repositories": {"excluding": "sandbox/**"}, "tags": {"regex": "^x"}, "disabled": true}]"#,
        );
        assert!(r.may_select_repository("p/team-a/api"));
        assert!(!r.may_select_repository("p/team-b/api"));
        assert!(!r.may_select_repository("p/app"), "a disabled rule selects nothing");
        let r = rules(r#"[{"repositories": {"excluding": "sandbox/**"}}]"#);
        assert!(r.may_select_repository("p/app"));
        assert!(!r.may_select_repository("p/sandbox/x"));
        assert!(rules(r#"[{"tags": {"matching": "v*"}}]"#).may_select_repository("p/anything"));
    }

    #[test]
    fn star_stays_in_one_segment_and_doublestar_crosses() {
        let r = rules(r#"[{"repositories": {"matching": "team-a/*"}}]"#);
        assert_eq!(hit(&r, "team-a/api", "v1"), Some(0));
        assert_eq!(hit(&r, "team-a/api/x", "v1"), None);
        assert_eq!(hit(&r, "team-a", "v1"), None);
        let r = rules(r#"[{"repositories": {"matching": "team-a/**"}}]"#);
        assert_eq!(hit(&r, "team-a/api", "v1"), Some(0));
        assert_eq!(hit(&r, "team-a/api/x", "v1"), Some(0));
        assert_eq!(hit(&r, "team-ab/api", "v1"), None);
        let r = rules(r#"[{"repositories": {"matching": "**/api"}}]"#);
        assert_eq!(hit(&r, "api", "v1"), Some(0));
        assert_eq!(hit(&r, "a/b/api", "v1"), Some(0));
        assert_eq!(hit(&r, "a/b/api2", "v1"), None);
        let r = rules(r#"[{"repositories": {"matching": "*"}}]"#);
        assert_eq!(hit(&r, "app", "v1"), Some(0));
        assert_eq!(hit(&r, "team/app", "v1"), None, "`*` does not cross `/`");
    }

    #[test]
    fn question_mark_classes_and_braces() {
        let r = rules(r#"[{"tags": {"matching": "v?.[0-9]"}}]"#);
        assert_eq!(hit(&r, "a", "v1.2"), Some(0));
        assert_eq!(hit(&r, "a", "v10.2"), None);
        assert_eq!(hit(&r, "a", "v1.x"), None);
        let r = rules(r#"[{"tags": {"matching": "{release,stable}-*,v{1,2}"}}]"#);
        for t in ["release-1", "stable-x", "v1", "v2"] {
            assert_eq!(hit(&r, "a", t), Some(0), "{t}");
        }
        for t in ["v3", "release", "{release", "v{1"] {
            assert_eq!(hit(&r, "a", t), None, "{t}");
        }
        // Harbor's API stores the UI's comma list as one brace glob: both forms are the same.
        let r = rules(r#"[{"tags": {"excluding": "{rc,test,nightly}"}}]"#);
        assert_eq!(hit(&r, "a", "rc"), None);
        assert_eq!(hit(&r, "a", "v1"), Some(0));
    }

    #[test]
    fn arrays_and_comma_strings_are_the_same() {
        let a = rules(r#"[{"repositories": {"matching": ["team-a/**", "team-b/api"]}}]"#);
        let b = rules(r#"[{"repositories": {"matching": "team-a/**, team-b/api"}}]"#);
        let c = rules(r#"[{"repositories": {"matching": ["team-a/**,team-b/api"]}}]"#);
        for r in [&a, &b, &c] {
            assert_eq!(hit(r, "team-a/x", "v1"), Some(0));
            assert_eq!(hit(r, "team-b/api", "v1"), Some(0));
            assert_eq!(hit(r, "team-b/web", "v1"), None);
        }
    }

    #[test]
    fn regex_is_unanchored_unless_anchored() {
        let r = rules(r#"[{"tags": {"regex": "\\d+\\.\\d+\\.\\d+"}}]"#);
        assert_eq!(hit(&r, "a", "1.0.0"), Some(0));
        assert_eq!(hit(&r, "a", "v2.1.0-rc1"), Some(0), "matched anywhere, as GitLab does");
        assert_eq!(hit(&r, "a", "v2.1"), None);
        assert_eq!(hit(&r, "a", "\u{661}.\u{662}.\u{663}"), None, "as in RE2, \\d is ASCII");
        let r = rules(r#"[{"tags": {"regex": "(?i)^LATEST$"}}]"#);
        assert_eq!(hit(&r, "a", "latest"), Some(0));
        let r = rules(r#"[{"tags": {"regex": "^latest$"}}]"#);
        assert_eq!(hit(&r, "a", "latest"), Some(0));
        assert_eq!(hit(&r, "a", "latest2"), None);
        let r = rules(r#"[{"tags": {"regex": "stable|release"}}]"#);
        assert_eq!(hit(&r, "a", "1.0-stable"), Some(0));
        assert_eq!(hit(&r, "a", "release-2"), Some(0));
        assert_eq!(hit(&r, "a", "main"), None);
        let r = rules(r#"[{"tags": {"regex": ".*"}}]"#);
        assert_eq!(hit(&r, "a", "anything"), Some(0));
    }

    #[test]
    fn the_issue_example_first_rule_wins_the_reason() {
        let r = rules(
            r#"[
          {"name": "all but scratch tags", "repositories": {"matching": "**"}, "tags": {"excluding": "rc,test,nightly"}},
          {"repositories": {"matching": ["team-a/**", "team-b/api"]}, "tags": {"matching": "v*.*.*"}},
          {"repositories": {"excluding": "sandbox/**"}, "tags": {"regex": "\\d+\\.\\d+\\.\\d+"}},
          {"tags": {"matching": "**"}, "disabled": true}
        ]"#,
        );
        assert_eq!(r.enabled(), 3);
        assert_eq!(r.disabled(), 1);
        let m = r.first_match("team-a/api", "v1.2.3").unwrap();
        assert_eq!(m.index(), 0);
        assert_eq!(m.reason(), r#"rule "all but scratch tags" (rules[0])"#);
        assert_eq!(hit(&r, "team-a/api", "rc"), None, "the disabled catch-all has no effect");
        assert_eq!(hit(&r, "sandbox/x", "test"), None);
        assert_eq!(r.rules.get(1).unwrap().reason(), "rules[1]");
        assert_eq!(
            r.rules.get(1).unwrap().description(),
            r#"projects matching ["*"], repositories matching ["team-a/**", "team-b/api"], tags matching ["v*.*.*"]"#
        );
    }

    #[test]
    fn excluding_and_any_combinations() {
        let r = rules(
            r#"[
          {"repositories": {"excluding": "sandbox/**"}, "tags": {"excluding": "latest"}},
          {"repositories": {"matching": "sandbox/**"}, "tags": {"regex": "^v"}},
          {}
        ]"#,
        );
        assert_eq!(hit(&r, "app", "v1"), Some(0));
        assert_eq!(hit(&r, "app", "latest"), Some(2), "the empty rule selects everything");
        assert_eq!(hit(&r, "sandbox/x", "v1"), Some(1));
        assert_eq!(hit(&r, "sandbox/x", "dev"), Some(2));
        let r = rules(r#"[{"repositories": {"excluding": "sandbox/**"}, "tags": {"excluding": "latest"}}]"#);
        assert_eq!(hit(&r, "sandbox/x", "v1"), None);
        assert_eq!(hit(&r, "app", "latest"), None);
        assert_eq!(
            r.rules.first().unwrap().description(),
            r#"projects matching ["*"], repositories excluding ["sandbox/**"], tags excluding ["latest"]"#
        );
        assert_eq!(rules("[{}]").rules.first().unwrap().description(), "every tag of every repository");
        // A rule with no `matching` selector is found apart from the pattern hits, yet it still
        // wins over a later rule that a pattern hit found.
        let r = rules(
            r#"[{"tags": {"excluding": "latest"}}, {"tags": {"matching": "v*"}}, {"repositories": {"matching": "**"}}]"#,
        );
        assert_eq!(hit(&r, "app", "v1"), Some(0));
        assert_eq!(hit(&r, "app", "latest"), Some(2));
    }

    #[test]
    fn shared_patterns_serve_every_rule_that_uses_them() {
        let r = rules(
            r#"[
          {"repositories": {"matching": "a/**"}, "tags": {"matching": "v*"}},
          {"repositories": {"excluding": "a/**"}, "tags": {"matching": "v*"}},
          {"repositories": {"matching": "b/**"}, "tags": {"excluding": "v*"}},
          {"tags": {"matching": "v*,x"}}
        ]"#,
        );
        assert_eq!(hit(&r, "a/x", "v1"), Some(0));
        assert_eq!(hit(&r, "c", "v1"), Some(1));
        assert_eq!(hit(&r, "b/x", "w"), Some(2));
        assert_eq!(hit(&r, "a/x", "x"), Some(3));
        assert_eq!(hit(&r, "a/x", "w"), None);
        // The first rule on a shared pattern is refused by its other selector; the next answers.
        let r = rules(
            r#"[{"repositories": {"excluding": "a/**"}, "tags": {"matching": "v*"}}, {"tags": {"matching": "v*"}}]"#,
        );
        assert_eq!(hit(&r, "a/x", "v1"), Some(1));
        assert_eq!(hit(&r, "b", "v1"), Some(0));
    }

    #[test]
    fn disabled_rules_have_no_effect_but_are_validated() {
        let r = rules(r#"[{"tags": {"matching": "**"}, "disabled": true}]"#);
        assert!(r.is_empty());
        assert_eq!(hit(&r, "a", "v1"), None);
        let e = try_rules(r#"[{"tags": {"regex": "("}, "disabled": true}]"#).unwrap_err();
        assert_eq!(e.field, "rules[0].tags.regex");
    }

    #[test]
    fn thousand_rules_decide_by_sets() {
        // Rule i protects tag `t<i>` in repository `r<i>`; the last one is a regex rule.
        let mut v: Vec<String> = (0..999)
            .map(|i| format!(r#"{{"name": "r{i}", "repositories": {{"matching": "r{i}"}}, "tags": {{"matching": "t{i}"}}}}"#))
            .collect();
        v.push(r#"{"name": "last", "tags": {"regex": "^final-\\d+$"}}"#.into());
        let r = rules(&format!("[{}]", v.join(",")));
        assert_eq!(r.enabled(), 1000);
        assert_eq!(hit(&r, "r0", "t0"), Some(0));
        assert_eq!(hit(&r, "r998", "t998"), Some(998));
        assert_eq!(hit(&r, "r998", "t997"), None);
        assert_eq!(hit(&r, "any/repo", "final-7"), Some(999));
        assert_eq!(hit(&r, "r5", "t6"), None);
        // Many exclusion rules, each hit by its own exclusion, and one that is not.
        let mut v: Vec<String> =
            (0..999).map(|i| format!(r#"{{"tags": {{"excluding": "x,t{i}"}}}}"#)).collect();
        v.push(r#"{"tags": {"excluding": "x"}}"#.into());
        let r = rules(&format!("[{}]", v.join(",")));
        assert_eq!(hit(&r, "a", "x"), None);
        assert_eq!(hit(&r, "a", "t0"), Some(1));
        assert_eq!(hit(&r, "a", "y"), Some(0));
        // A thousand rules on the same tag glob, each for its own repositories (the bench's case).
        let v: Vec<String> = (0..1000)
            .map(|i| {
                format!(
                    r#"{{"repositories": {{"matching": "team{i}/**"}}, "tags": {{"matching": "dev-*"}}}}"#
                )
            })
            .collect();
        let r = rules(&format!("[{}]", v.join(",")));
        assert_eq!(hit(&r, "team999/app", "dev-1"), Some(999));
        assert_eq!(hit(&r, "team0/app", "dev-1"), Some(0));
        assert_eq!(hit(&r, "team1000/app", "dev-1"), None);
        assert_eq!(hit(&r, "team5/app", "v1"), None);
        // A thousand regexes with classes fit in one set.
        let v: Vec<String> =
            (0..1000).map(|i| format!(r#"{{"tags": {{"regex": "^rel{i}-\\d+\\.\\w+$"}}}}"#)).collect();
        let r = rules(&format!("[{}]", v.join(",")));
        assert_eq!(hit(&r, "a", "rel999-1.x"), Some(999));
        assert_eq!(hit(&r, "a", "rel1000-1.x"), None);
    }

    // Through the whole configuration: OR logic with the `global`/`repository` scopes.
    fn cfg(json: &str) -> crate::config::Config {
        crate::config::Config::from_json(json.as_bytes()).unwrap()
    }
    fn decide(c: &crate::config::Config, repo: &str, tag: &str) -> (bool, String) {
        let d = c.policy.decide(repo, tag);
        (d.immutable, d.reason)
    }

    #[test]
    fn rules_or_scopes() {
        let c = cfg(r#"{
          "global": {"immutable_tags": true, "immutable_tags_exclusions": ["^latest$", "^v.*"]},
          "repository": {"dev": {"immutable_tags": false}},
          "rules": [{"name": "releases", "tags": {"regex": "^v\\d"}}, {"projects": "dev", "repositories": {"matching": "keep"}}]
        }"#);
        assert_eq!(
            decide(&c, "app", "main"),
            (true, "global.immutable_tags = true".into()),
            "the scope decides first"
        );
        assert_eq!(
            decide(&c, "app", "v1"),
            (true, r#"rule "releases" (rules[0])"#.into()),
            "a scope exclusion does not exempt a tag from a rule"
        );
        assert_eq!(
            decide(&c, "app", "latest"),
            (false, r#"global.immutable_tags_exclusions matches "^latest$"; no rule matches"#.into())
        );
        assert_eq!(decide(&c, "dev/x", "v2"), (true, r#"rule "releases" (rules[0])"#.into()));
        assert_eq!(decide(&c, "dev/keep", "main"), (true, "rules[1]".into()));
        assert_eq!(
            decide(&c, "dev/x", "main"),
            (false, r#"repository."dev".immutable_tags = false; no rule matches"#.into())
        );
        assert!(c.summary().contains("rules: 2 enabled, 0 disabled"), "{}", c.summary());
    }

    #[test]
    fn rules_alone_and_may_protect_anything() {
        let c = cfg(r#"{"rules": [{"tags": {"matching": "v*.*.*"}}]}"#);
        assert!(c.policy.may_protect_anything());
        assert_eq!(decide(&c, "app", "v1.2.3"), (true, "rules[0]".into()));
        assert_eq!(
            decide(&c, "app", "main"),
            (false, "no immutable_tags setting applies; no rule matches".into())
        );
        let c = cfg(r#"{"rules": [{"tags": {"matching": "**"}, "disabled": true}]}"#);
        assert!(!c.policy.may_protect_anything(), "only disabled rules: nothing to protect");
        assert_eq!(decide(&c, "app", "v1"), (false, "no immutable_tags setting applies".into()));
    }

    #[test]
    fn signature_tags_stay_mutable_under_rules_unless_protected() {
        let sig = format!("sha256-{}.sig", "a".repeat(64));
        let c = cfg(r#"{"rules": [{"tags": {"matching": "**"}}]}"#);
        assert_eq!(
            decide(&c, "app", &sig),
            (false, "signature fallback tag (protect_signature_tags = false)".into())
        );
        assert!(decide(&c, "app", "sha256-abc").0);
        let c = cfg(r#"{"rules": [{"tags": {"matching": "**"}}], "protect_signature_tags": true}"#);
        assert_eq!(decide(&c, "app", &sig), (true, "rules[0]".into()));
    }

    #[test]
    fn config_errors_for_rules() {
        let bad = |json: &str| crate::config::Config::from_json(json.as_bytes()).unwrap_err();
        let e = bad(r#"{"rules": [{}, {}, {"tags": {"regex": "(x"}}]}"#);
        assert!(
            e.to_string().starts_with(
                r#"invalid configuration: field `rules[2].tags.regex` = "(x": invalid regular expression"#
            ),
            "{e}"
        );
        let e = bad(r#"{"rules": [{"tags": {"matching": 5}}]}"#);
        assert_eq!(e.field, "rules[0].tags.matching");
        assert!(e.reason.contains("comma-separated"), "{e}");
        let e = bad(r#"{"rules": [{"repositories": {"regex": "x"}}]}"#);
        assert_eq!(e.field, "rules[0].repositories.regex");
        assert!(e.reason.contains("unknown field"), "{e}");
        let e = bad(r#"{"rules": [{"tag": {}}]}"#);
        assert_eq!(e.field, "rules[0].tag");
        let e = bad(r#"{"rules": [{"disabled": "yes"}]}"#);
        assert_eq!(e.field, "rules[0].disabled");
        let e = bad(r#"{"rules_max_regex_length": 0}"#);
        assert_eq!(e.field, "rules_max_regex_length");
        let e = bad(r#"{"rules_max_regex_length": 3, "rules": [{"tags": {"regex": "abcd"}}]}"#);
        assert_eq!(e.field, "rules[0].tags.regex");
        assert!(e.reason.contains("longer than rules_max_regex_length (3)"), "{e}");
        assert!(bad(r#"{"rules": {}}"#).to_string().contains("rules"));
    }

    #[test]
    fn errors_name_field_and_value() {
        let e = try_rules(r#"[{}, {}, {"tags": {"regex": "(unclosed"}}]"#).unwrap_err();
        assert_eq!(e.field, "rules[2].tags.regex");
        assert_eq!(e.value, "\"(unclosed\"");
        assert!(e.reason.starts_with("invalid regular expression"), "{e}");

        let e = try_rules(r#"[{"tags": {"regex": "(?=x)"}}]"#).unwrap_err();
        assert_eq!(e.field, "rules[0].tags.regex", "look-around is not RE2");

        let long = "a".repeat(257);
        let e = try_rules(&format!(r#"[{{"tags": {{"regex": "{long}"}}}}]"#)).unwrap_err();
        assert!(e.reason.contains("rules_max_regex_length (256)"), "{e}");
        let json = format!(r#"[{{"tags": {{"regex": "{long}"}}}}]"#);
        let raw = RawRule::read_all(&Json::parse(json.as_bytes()).unwrap(), "rules").unwrap();
        assert!(Rules::compile(raw, 300).is_ok());
        // The limit itself is allowed.
        let raw = RawRule::read_all(&Json::parse(json.as_bytes()).unwrap(), "rules").unwrap();
        assert!(Rules::compile(raw, 257).is_ok());

        // A name of 200 characters is taken; 201 is refused.
        let named = |n: usize| try_rules(&format!(r#"[{{"name": "{}"}}]"#, "é".repeat(n)));
        assert!(named(200).is_ok());
        let e = named(201).unwrap_err();
        assert_eq!(e.field, "rules[0].name");
        assert!(e.reason.contains("1 to 200 characters"), "{e}");

        let e = try_rules(r#"[{"tags": {"matching": "v*", "excluding": "rc"}}]"#).unwrap_err();
        assert_eq!(e.field, "rules[0].tags");
        assert!(e.reason.contains("exactly one of"), "{e}");
        let e = try_rules(r#"[{"repositories": {}}]"#).unwrap_err();
        assert_eq!(e.field, "rules[0].repositories");

        let e = try_rules(r#"[{"tags": {"matching": ["v*", "{a,b"]}}]"#).unwrap_err();
        assert_eq!(e.field, "rules[0].tags.matching[1]");
        assert_eq!(e.value, "\"{a,b\"");
        assert!(e.reason.starts_with("invalid glob"), "{e}");

        let e = try_rules(r#"[{"tags": {"excluding": "rc,,test"}}]"#).unwrap_err();
        assert_eq!(e.field, "rules[0].tags.excluding");
        assert!(e.reason.contains("empty pattern"), "{e}");
        let e = try_rules(r#"[{"tags": {"excluding": []}}]"#).unwrap_err();
        assert_eq!(e.field, "rules[0].tags.excluding");
        let e = try_rules(r#"[{"tags": {"regex": ""}}]"#).unwrap_err();
        assert_eq!(e.field, "rules[0].tags.regex");
        let e = try_rules(r#"[{"name": "bad\nname"}]"#).unwrap_err();
        assert_eq!(e.field, "rules[0].name");
    }
}

/// Issue 30: Harbor's project scoping.
#[cfg(test)]
mod projects {
    use crate::config::Config;
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn cfg(json: &str) -> Config {
        Config::from_json(json.as_bytes()).unwrap()
    }
    fn immutable(c: &Config, repo: &str, tag: &str) -> bool {
        c.policy.decide(repo, tag).immutable
    }

    #[test]
    fn a_copied_harbor_rule_matches_the_name_below_the_project() {
        let c = cfg(r#"{"rules": [{"repositories": {"matching": "*"}, "tags": {"matching": "**"}}]}"#);
        assert!(immutable(&c, "library/app", "v1"));
        assert!(!immutable(&c, "library/team/app", "v1"), "`*` stays in one segment, as in Harbor");
        assert!(immutable(&c, "app", "v1"), "a name without a project is matched whole");
        assert!(c.policy.may_protect_in("library/app"));
        let c = cfg(r#"{"rules": [{"repositories": {"matching": "app"}, "tags": {"matching": "**"}}]}"#);
        assert!(immutable(&c, "library/app", "v1"));
        assert!(immutable(&c, "app", "v1"));
        assert!(!immutable(&c, "library/app2", "v1"));
    }

    #[test]
    fn projects_select_the_first_path_component() {
        let c = cfg(
            r#"{"rules": [{"projects": ["team-a"], "repositories": {"matching": "**"}, "tags": {"matching": "**"}}]}"#,
        );
        assert!(!immutable(&c, "library/app", "v1"));
        assert!(!c.policy.may_protect_in("library/app"));
        assert!(immutable(&c, "team-a/app", "v1"));
        assert!(immutable(&c, "team-a/x/y", "v1"));
        assert!(!immutable(&c, "team-a", "v1"), "a name with one component has no project");
        let c = cfg(r#"{"rules": [{"projects": "team-*", "repositories": {"matching": "api"}}]}"#);
        assert!(immutable(&c, "team-b/api", "v1"));
        assert!(!immutable(&c, "team-b/web", "v1"));
        assert!(!immutable(&c, "lib/api", "v1"));
        let c = cfg(
            r#"{"rules": [{"projects": {"excluding": "sandbox"}, "repositories": {"excluding": "tmp/**"}}]}"#,
        );
        assert!(immutable(&c, "app", "v1"), "no project: not excluded");
        assert!(immutable(&c, "team/app", "v1"));
        assert!(!immutable(&c, "sandbox/app", "v1"));
        assert!(!immutable(&c, "team/tmp/x", "v1"));
        assert!(!c.policy.may_protect_in("sandbox/app"));
        assert!(c.policy.may_protect_in("team/app"));
        let c = cfg(r#"{"rules": [{"projects": "a,b"}]}"#);
        assert!(immutable(&c, "b/x", "v1"));
        assert!(!immutable(&c, "c/x", "v1"));
    }

    #[test]
    fn the_first_rule_wins_across_project_and_repository_candidates() {
        let c = cfg(
            r#"{"rules": [{"projects": "*", "repositories": {"matching": "x"}, "tags": {"matching": "v*"}},
            {"projects": "a", "tags": {"matching": "v*"}}, {"projects": ["a", "b"]}, {"projects": "a", "repositories": {"matching": "x"}}]}"#,
        );
        let hit = |repo: &str, tag: &str| c.policy.matching_rule(repo, tag).map(|r| r.index());
        assert_eq!(hit("a/x", "v1"), Some(0));
        assert_eq!(hit("a/y", "v1"), Some(1));
        assert_eq!(hit("a/x", "w"), Some(2));
        assert_eq!(hit("c/x", "w"), None);
        assert_eq!(hit("c/x", "v2"), Some(0));
        assert_eq!(hit("x", "v2"), None, "a name without a project: no `projects` matching selects it");
        // A thousand projects, one rule each: a decision checks the rules of its project only.
        let v: Vec<String> = (0..1000).map(|i| format!(r#"{{"projects": "team{i}", "repositories": {{"matching": "app/**"}}, "tags": {{"matching": "dev-*"}}}}"#)).collect();
        let c = cfg(&format!(r#"{{"rules": [{}]}}"#, v.join(",")));
        let hit = |repo: &str, tag: &str| c.policy.matching_rule(repo, tag).map(|r| r.index());
        assert_eq!(hit("team999/app/x", "dev-1"), Some(999));
        assert_eq!(hit("team0/app/x", "dev-1"), Some(0));
        assert_eq!(hit("team0/web/x", "dev-1"), None);
        assert_eq!(hit("team1000/app/x", "dev-1"), None);
    }

    #[test]
    fn a_rule_whose_meaning_would_change_is_refused_at_load() {
        let bad = |json: &str| Config::from_json(json.as_bytes()).unwrap_err();
        // Full-path rules written before projects existed: never silently unprotected.
        let e = bad(r#"{"rules": [{"repositories": {"matching": ["team-a/**", "team-b/api"]}}]}"#);
        assert_eq!(e.field, "rules[0].repositories.matching[0]");
        assert!(e.reason.contains("below the project") && e.reason.contains("projects"), "{e}");
        let e = bad(r#"{"rules": [{"repositories": {"excluding": "sandbox"}}]}"#);
        assert_eq!(e.field, "rules[0].repositories.excluding");
        assert!(e.reason.contains("projects"), "{e}");
        let e = bad(r#"{"rules": [{"projects": "a/b"}]}"#);
        assert_eq!(e.field, "rules[0].projects");
        assert!(e.reason.contains("one path component"), "{e}");
        let e = bad(r#"{"rules": [{"projects": []}]}"#);
        assert_eq!(e.field, "rules[0].projects");
        // With `projects`, a nested selector is Harbor's.
        let c = cfg(r#"{"rules": [{"projects": "*", "repositories": {"matching": "team-a/**"}}]}"#);
        assert!(immutable(&c, "lib/team-a/x", "v1"));
        assert!(!immutable(&c, "team-a/x", "v1"));
    }
}

/// Attack review of the migration refusal (F5): a glob whose text has no `/` may still match one.
#[cfg(test)]
mod migration_review {
    use crate::config::Config;
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn refused(glob: &str) -> Option<String> {
        let json = serde_json::json!({"rules": [{"repositories": {"matching": glob}}]}).to_string();
        Config::from_json(json.as_bytes()).err().map(|e| e.to_string())
    }

    #[test]
    fn a_glob_whose_classes_can_match_a_slash_is_refused_without_projects() {
        // Each matched `team/api` when globs matched the whole name.
        for glob in [
            "team[!_]api",
            "prod[+-0]api",
            "team[^a]api",
            "{x,team[!_]api}",
            "[!a]*",
            "**,team[!_]api",
            "app, a/**",
        ] {
            let e = refused(glob).unwrap_or_else(|| panic!("{glob} loaded"));
            assert!(
                e.contains("repositories.matching") && e.contains("add \\\"projects\\\"")
                    || e.contains("add \"projects\""),
                "{e}"
            );
        }
        let e = Config::from_json(br#"{"rules": [{"repositories": {"matching": ["app", "team[!_]api"]}}]}"#)
            .unwrap_err();
        assert_eq!(
            (e.field.as_str(), e.value.as_str()),
            ("rules[0].repositories.matching[1]", "\"team[!_]api\"")
        );
    }

    /// Loads `json` on a thread with wasm32's 1 MiB stack: a stack overflow aborts the binary.
    #[cfg(not(target_arch = "wasm32"))]
    fn load_on_a_small_stack(json: String) -> Result<(), String> {
        std::thread::Builder::new()
            .stack_size(1 << 20)
            .spawn(move || {
                Config::from_json(json.as_bytes())
                    .map(|_| ())
                    .map_err(|e| format!("{}: {}", e.field, e.reason))
            })
            .unwrap()
            .join()
            .unwrap()
    }

    #[test]
    #[cfg(not(target_arch = "wasm32"))]
    fn deeply_nested_or_overlong_globs_are_refused_at_load_not_overflowing_the_stack() {
        let deep = format!("{}a{}", "{".repeat(200_000), "}".repeat(200_000));
        let json = serde_json::json!({"rules": [{"tags": {"matching": ["v*", deep]}}]}).to_string();
        let e = load_on_a_small_stack(json).unwrap_err();
        assert!(e.starts_with("rules[0].tags.matching[1]: invalid glob"), "{}", &e[..200.min(e.len())]);
        assert!(e.ends_with("400001 characters, longer than 1024"), "{}", &e[e.len().saturating_sub(200)..]);
        for key in ["projects", "repositories"] {
            let json = serde_json::json!({"rules": [{"projects": "*", key: {"matching": deep}}]}).to_string();
            assert!(load_on_a_small_stack(json)
                .unwrap_err()
                .ends_with("400001 characters, longer than 1024"));
        }
        // Nesting is capped within the length too; at the limit it loads.
        let deeper = format!("{}a{}", "{".repeat(17), "}".repeat(17));
        let e =
            load_on_a_small_stack(serde_json::json!({"rules": [{"tags": {"matching": deeper}}]}).to_string())
                .unwrap_err();
        assert!(e.starts_with("rules[0].tags.matching: invalid glob"), "{e}");
        assert!(e.ends_with("alternate groups nested deeper than 16"), "{e}");
        let ok = format!("{}a{}", "{".repeat(16), "}".repeat(16));
        assert_eq!(
            load_on_a_small_stack(serde_json::json!({"rules": [{"tags": {"matching": ok}}]}).to_string()),
            Ok(())
        );
        let long = "a".repeat(1025);
        let e =
            load_on_a_small_stack(serde_json::json!({"rules": [{"tags": {"matching": long}}]}).to_string())
                .unwrap_err();
        assert!(e.ends_with("1025 characters, longer than 1024"), "{}", &e[e.len().saturating_sub(200)..]);
        assert_eq!(
            load_on_a_small_stack(
                serde_json::json!({"rules": [{"tags": {"matching": "a".repeat(1024)}}]}).to_string()
            ),
            Ok(())
        );
    }

    #[test]
    fn a_glob_that_cannot_match_a_slash_still_loads() {
        for glob in [
            "**",
            "app, **",
            "**,app",
            "*",
            "team?api",
            "team[!/]api",
            "team[a-z]api",
            "prod[0-9]*",
            "{a,b}*",
            "team**",
            "[!a/]x",
        ] {
            assert_eq!(refused(glob), None, "{glob}");
        }
    }
}
