//! Exclusion patterns (Angos `immutable_tags_exclusions`): regular expressions matched against
//! the whole tag.
//!
//! Patterns are compiled with `regex-automata`'s lazy DFA, in ASCII mode (see pattern.rs:
//! `\d`, `\w`, `\s` and `(?i)` are ASCII classes). Plain patterns are compiled together into
//! one DFA, so matching costs one pass over the tag however many there are. Look-ahead is
//! accepted at the start of a pattern (the seeds' "protect release tags only" example,
//! `^(?!v[0-9]+\.[0-9]+\.[0-9]+$).*$`): each look-ahead is its own DFA, tested at the tag's
//! start. Everything here runs in time linear in the tag (no backtracking), so no pattern can
//! stall a worker.

use crate::policy::pattern::Matcher;

#[derive(Debug, Clone)]
pub struct Exclusions {
    patterns: Vec<String>,
    /// Every plain pattern (no look-ahead), in one DFA whose pattern IDs index `plain_index`.
    plain: Option<Matcher>,
    /// Index into `patterns` for each pattern of `plain`.
    plain_index: Vec<usize>,
    /// Patterns with leading look-aheads, by index into `patterns`.
    guarded: Vec<(usize, Guarded)>,
}

/// The outcome of matching a tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Match<'a> {
    /// The tag matches this pattern: it is excluded (mutable).
    Excluded(&'a str),
    NotExcluded,
    /// The matcher could not finish (the lazy DFA gave up): the tag is treated as not
    /// excluded, the safe side.
    Undecided(&'a str),
}

/// `(?=A)`/`(?!A)`... then the rest `B`: matches when every look-ahead holds at the tag's
/// start and `B` matches the whole tag.
#[derive(Debug, Clone)]
struct Guarded {
    /// (negated, `A` anchored at the start only)
    look_aheads: Vec<(bool, Matcher)>,
    rest: Matcher,
}

/// The pattern engine's error text, with a hint where these patterns differ from it.
fn error_text(e: String) -> String {
    if e.contains("look-around") || e.contains("backreferences") {
        format!("{e} (look-ahead is supported at the start of a pattern only, e.g. ^(?!v[0-9]+$).*$)")
    } else {
        e
    }
}

fn compile_one(patterns: &[String]) -> Result<Matcher, String> {
    Matcher::new(patterns).map_err(error_text)
}

impl Exclusions {
    /// Compiles `patterns`; the error names the index of the first bad pattern and why.
    pub fn compile(patterns: &[String]) -> Result<Exclusions, (usize, String)> {
        let mut plain = Vec::new();
        let mut plain_index = Vec::new();
        let mut guarded = Vec::new();
        for (i, p) in patterns.iter().enumerate() {
            let (heads, rest) = split_look_aheads(p).map_err(|why| (i, why))?;
            let whole = format!("^(?:{rest})$");
            if heads.is_empty() {
                // Compiled alone first, so an error names its own pattern.
                compile_one(std::slice::from_ref(&whole)).map_err(|why| (i, why))?;
                plain.push(whole);
                plain_index.push(i);
                continue;
            }
            let mut look_aheads = Vec::new();
            for (negated, body) in heads {
                look_aheads.push((negated, compile_one(&[format!("^(?:{body})")]).map_err(|why| (i, why))?));
            }
            let rest = compile_one(&[whole]).map_err(|why| (i, why))?;
            guarded.push((i, Guarded { look_aheads, rest }));
        }
        let plain = if plain.is_empty() { None } else { Some(compile_one(&plain).map_err(|why| (0, why))?) };
        Ok(Exclusions { patterns: patterns.to_vec(), plain, plain_index, guarded })
    }

    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }

    pub fn matches(&self, tag: &str) -> Match<'_> {
        let pattern = |i: usize| self.patterns.get(i).map_or("", String::as_str);
        let mut undecided = None;
        if let Some(set) = &self.plain {
            match set.find(tag) {
                Ok(Some(id)) => {
                    return Match::Excluded(pattern(self.plain_index.get(id).copied().unwrap_or(0)))
                }
                Ok(None) => {}
                Err(_) => undecided = Some(pattern(self.plain_index.first().copied().unwrap_or(0))),
            }
        }
        'patterns: for (i, g) in &self.guarded {
            for (negated, m) in &g.look_aheads {
                match m.find(tag) {
                    Ok(found) if found.is_some() != *negated => {}
                    Ok(_) => continue 'patterns,
                    Err(_) => {
                        undecided = undecided.or(Some(pattern(*i)));
                        continue 'patterns;
                    }
                }
            }
            match g.rest.find(tag) {
                Ok(Some(_)) => return Match::Excluded(pattern(*i)),
                Ok(None) => {}
                Err(_) => undecided = undecided.or(Some(pattern(*i))),
            }
        }
        undecided.map_or(Match::NotExcluded, Match::Undecided)
    }
}

/// A pattern that can only ever match one literal tag while it reads like a prefix (`^dev-`
/// excludes the tag `dev-` only, not `dev-123`: patterns match the whole tag). `None` if the
/// pattern is not such a literal, or is plainly meant as one tag (`latest`, `^latest$`).
pub fn literal_prefix_warning(pattern: &str) -> Option<String> {
    let body = pattern.strip_prefix('^').unwrap_or(pattern);
    if body.ends_with('$') || body.is_empty() {
        return None;
    }
    // Only tag characters (`.` escaped, else it is a wildcard): the pattern is one literal tag.
    let mut literal = String::new();
    let mut chars = body.chars();
    while let Some(c) = chars.next() {
        let (c, escaped) = if c == '\\' { (chars.next()?, true) } else { (c, false) };
        let literal_char = c.is_ascii_alphanumeric() || matches!(c, '_' | '-') || (c == '.' && escaped);
        if !literal_char {
            return None;
        }
        literal.push(c);
    }
    let reads_like_prefix = pattern.starts_with('^') || literal.ends_with(['-', '_', '.']);
    reads_like_prefix.then(|| {
        format!(
            "matches only the tag \"{literal}\" (exclusions match the whole tag): write ^{p}.*$ to exclude every tag starting with \"{literal}\", or ^{p}$ if you mean that one tag",
            p = body
        )
    })
}

/// Leading look-aheads (negated, body) and the rest of a pattern.
type Split<'a> = (Vec<(bool, &'a str)>, &'a str);

/// Splits `^(?!A)(?=B)rest` into its leading look-aheads and the rest. A pattern with no
/// leading look-ahead comes back whole. Refuses a top-level `|` after a look-ahead, whose
/// meaning (`(?!A)x|y` guards only `x`) a split would change.
fn split_look_aheads(p: &str) -> Result<Split<'_>, String> {
    let mut rest = p.strip_prefix('^').unwrap_or(p);
    let mut heads = Vec::new();
    loop {
        let negated = if rest.starts_with("(?!") {
            true
        } else if rest.starts_with("(?=") {
            false
        } else {
            break;
        };
        let close = group_end(rest).ok_or_else(|| "unclosed look-ahead group".to_string())?;
        let body = rest.get(3..close).unwrap_or("");
        heads.push((negated, body));
        rest = rest.get(close + 1..).unwrap_or("");
    }
    if heads.is_empty() {
        return Ok((heads, p));
    }
    if has_top_level_alternation(rest) {
        return Err(
            "a top-level `|` after a look-ahead: wrap the alternatives in a group, e.g. ^(?!x)(?:a|b)$"
                .into(),
        );
    }
    Ok((heads, rest))
}

/// Walks a pattern, calling `each(depth, byte, offset)` for every byte outside escapes and
/// character classes; stops when `each` returns true and gives that offset.
fn walk(p: &str, mut each: impl FnMut(usize, u8, usize) -> bool) -> Option<usize> {
    let b = p.as_bytes();
    let (mut i, mut depth, mut class) = (0usize, 0usize, 0usize);
    while let Some(&c) = b.get(i) {
        if c == b'\\' {
            i += 2;
            continue;
        }
        if c == b'[' {
            // Classes nest (`[[:digit:]]`); a `]` right after `[` or `[^` is a literal.
            class += 1;
            i += 1;
            if b.get(i) == Some(&b'^') {
                i += 1;
            }
            if b.get(i) == Some(&b']') {
                i += 1;
            }
            continue;
        }
        if class > 0 {
            if c == b']' {
                class -= 1;
            }
            i += 1;
            continue;
        }
        match c {
            b'(' => depth += 1,
            b')' => depth = depth.saturating_sub(1),
            _ => {}
        }
        if each(depth, c, i) {
            return Some(i);
        }
        i += 1;
    }
    None
}

/// Offset of the `)` closing the group that opens at offset 0.
fn group_end(p: &str) -> Option<usize> {
    walk(p, |depth, c, _| c == b')' && depth == 0)
}

fn has_top_level_alternation(p: &str) -> bool {
    walk(p, |depth, c, _| c == b'|' && depth == 0).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    // The same tests run on wasm32 under wasm-bindgen-test (Node.js).
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn ex(p: &[&str]) -> Exclusions {
        Exclusions::compile(&p.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }
    fn bad(p: &[&str]) -> (usize, String) {
        Exclusions::compile(&p.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap_err()
    }

    #[test]
    fn a_literal_that_reads_like_a_prefix_is_flagged() {
        let w = literal_prefix_warning("^dev-").unwrap();
        assert!(w.contains("only the tag \"dev-\"") && w.contains("^dev-.*$"), "{w}");
        // The warning is true: the pattern excludes "dev-" and nothing that starts with it.
        assert_eq!(ex(&["^dev-"]).matches("dev-"), Match::Excluded("^dev-"));
        assert_eq!(ex(&["^dev-"]).matches("dev-123"), Match::NotExcluded);
        for flagged in ["^dev", "^release\\.", "rc-", "^v1\\.2"] {
            assert!(literal_prefix_warning(flagged).is_some(), "{flagged}");
        }
        for fine in [
            "^dev-.*$",
            "^dev-.*",
            "dev-.*",
            "latest",
            "^latest$",
            "^(?!v[0-9]+$).*$",
            "^rc-[0-9]+",
            "^$",
            "^v1.2",
            "^",
            "",
        ] {
            assert_eq!(literal_prefix_warning(fine), None, "{fine}");
        }
    }

    #[test]
    fn whole_tag_is_matched() {
        let e = ex(&["latest", "^rc-.*$"]);
        assert_eq!(e.matches("latest"), Match::Excluded("latest"));
        assert_eq!(e.matches("latest2"), Match::NotExcluded);
        assert_eq!(e.matches("xlatest"), Match::NotExcluded);
        assert_eq!(e.matches("rc-1"), Match::Excluded("^rc-.*$"));
        assert_eq!(e.matches("v1"), Match::NotExcluded);
        assert_eq!(ex(&["a|b"]).matches("ab"), Match::NotExcluded, "alternation is grouped before anchoring");
    }

    #[test]
    fn seed_patterns_with_perl_classes_load() {
        let e = ex(&[r"^v\d+\.\d+$", r"^pr-\d+$", "^.*-SNAPSHOT$"]);
        assert_eq!(e.matches("v1.2"), Match::Excluded(r"^v\d+\.\d+$"));
        assert_eq!(e.matches("v1.2.3"), Match::NotExcluded);
        assert_eq!(e.matches("pr-42"), Match::Excluded(r"^pr-\d+$"));
        assert_eq!(e.matches("pr-x"), Match::NotExcluded);
        assert_eq!(e.matches("1.0-SNAPSHOT"), Match::Excluded("^.*-SNAPSHOT$"));
    }

    #[test]
    fn ascii_classes_and_case_insensitivity() {
        let e = ex(&[r"^\w+-\s?dev$", "(?i)^nightly$", r"^[[:digit:]]+\D$"]);
        assert_eq!(e.matches("a_1-dev"), Match::Excluded(r"^\w+-\s?dev$"));
        assert_eq!(e.matches("NightLY"), Match::Excluded("(?i)^nightly$"));
        assert_eq!(e.matches("123x"), Match::Excluded(r"^[[:digit:]]+\D$"));
        assert_eq!(e.matches("123"), Match::NotExcluded);
    }

    #[test]
    fn look_ahead_protects_release_tags_only() {
        let p = r"^(?!v[0-9]+\.[0-9]+\.[0-9]+$).*$";
        let e = ex(&[p]);
        assert_eq!(e.matches("v1.2.3"), Match::NotExcluded);
        assert_eq!(e.matches("v1.2.3-rc1"), Match::Excluded(p));
        assert_eq!(e.matches("latest"), Match::Excluded(p));
        let e = ex(&["latest", p]);
        assert_eq!(e.matches("latest"), Match::Excluded("latest"), "plain patterns first");
        assert_eq!(e.matches("v2.0.0"), Match::NotExcluded);
    }

    #[test]
    fn positive_and_chained_look_aheads() {
        let p = r"(?=v)(?![^.]*\.[^.]*\.)[\w.]+";
        let e = ex(&[p]);
        assert_eq!(e.matches("v1.2"), Match::Excluded(p));
        assert_eq!(e.matches("v1.2.3"), Match::NotExcluded);
        assert_eq!(e.matches("x1.2"), Match::NotExcluded);
        // Parentheses and brackets inside the look-ahead do not end it early.
        let q = r"^(?!(a|b)[)\]]\)).*$";
        let e = ex(&[q]);
        assert_eq!(e.matches("a])"), Match::NotExcluded);
        assert_eq!(e.matches("a)x"), Match::Excluded(q));
    }

    #[test]
    fn brackets_in_a_look_ahead_class_do_not_end_it() {
        // A class's content, whatever its first byte (`^`, a literal `]`, a `)`), stays in the
        // class: the look-ahead ends at its own `)`.
        for (p, kept, excluded) in [
            (r"^(?![v]1).*$", "v1", "v2"),
            (r"^(?![^])]x).*$", "ax", "ab"),
            (r"^(?![])]x).*$", ")x", "ax"),
            (r"^(?![x)]y).*$", "xy", "xz"),
            (r"^(?!x)[a|b]$", "x", "a"),
        ] {
            let e = ex(&[p]);
            assert_eq!(e.matches(kept), Match::NotExcluded, "{p} {kept}");
            assert_eq!(e.matches(excluded), Match::Excluded(p), "{p} {excluded}");
        }
    }

    #[test]
    fn patterns_are_kept_as_configured() {
        let e = ex(&["latest", r"^(?!v\d).*$"]);
        assert_eq!(e.patterns(), ["latest", r"^(?!v\d).*$"]);
        let none = ex(&[]);
        assert_eq!(none.patterns(), [] as [&str; 0]);
        assert_eq!(none.matches("v1"), Match::NotExcluded);
    }

    #[test]
    fn bad_pattern_is_reported_with_its_index() {
        let err = bad(&["ok", "("]);
        assert_eq!(err.0, 1);
        assert!(!err.1.contains('\n'), "{}", err.1);
    }

    #[test]
    fn unsupported_constructs_are_refused_at_load() {
        for (p, says) in [
            (r"^v(?=1).*$", "start of a pattern"),
            (r"^(a)\1$", "start of a pattern"),
            (r"^(?<=a)b$", "start of a pattern"),
            (r"^(?!x)a|b$", "top-level `|`"),
            (r"^(?!x", "unclosed"),
            (r"^\p{Greek}$", "Unicode"),
        ] {
            let (i, why) = bad(&["ok", p]);
            assert_eq!(i, 1, "{p}");
            assert!(why.contains(says), "{p}: {why}");
        }
    }

    #[test]
    fn many_patterns_share_one_pass() {
        let list: Vec<String> = (0..1000).map(|i| format!("^feature-{i}-.*$")).collect();
        let e = Exclusions::compile(&list).unwrap();
        assert_eq!(e.matches("feature-999-x"), Match::Excluded("^feature-999-.*$"));
        assert_eq!(e.matches("feature-1000-x"), Match::NotExcluded);
        assert!(e.guarded.is_empty());
    }
}
