//! Exclusion patterns (Angos `immutable_tags_exclusions`): regular expressions matched against
//! the whole tag. Plain patterns are compiled together into one `RegexSet`, so matching costs
//! one pass however many there are; patterns that need look-around (the seeds' "protect release
//! tags only" example) fall back to `fancy-regex`, with a backtracking limit.

use regex::RegexSet;

/// Backtracking steps a look-around pattern may take on one tag before the match is abandoned.
/// Tags are at most 128 bytes, so honest patterns stay far below it.
const BACKTRACK_LIMIT: usize = 100_000;

#[derive(Debug, Clone)]
pub struct Exclusions {
    patterns: Vec<String>,
    /// Index into `patterns` for each member of `set`.
    set_index: Vec<usize>,
    set: RegexSet,
    fancy: Vec<(usize, fancy_regex::Regex)>,
}

/// The outcome of matching a tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Match<'a> {
    /// The tag matches this pattern: it is excluded (mutable).
    Excluded(&'a str),
    NotExcluded,
    /// A look-around pattern gave up (backtracking limit): the tag is treated as not
    /// excluded, the safe side.
    Undecided(&'a str),
}

impl Exclusions {
    /// Compiles `patterns`; the error names the index of the first bad pattern and why.
    pub fn compile(patterns: &[String]) -> Result<Exclusions, (usize, String)> {
        let mut plain = Vec::new();
        let mut set_index = Vec::new();
        let mut fancy = Vec::new();
        for (i, p) in patterns.iter().enumerate() {
            let anchored = format!("^(?:{p})$");
            match regex::Regex::new(&anchored) {
                Ok(_) => {
                    plain.push(anchored);
                    set_index.push(i);
                }
                Err(plain_err) => {
                    let re = fancy_regex::RegexBuilder::new(&anchored)
                        .backtrack_limit(BACKTRACK_LIMIT)
                        .build()
                        .map_err(|e| (i, format!("{e} (as a plain regex: {})", first_line(&plain_err.to_string()))))?;
                    fancy.push((i, re));
                }
            }
        }
        let set = RegexSet::new(&plain).map_err(|e| (0, e.to_string()))?;
        Ok(Exclusions { patterns: patterns.to_vec(), set_index, set, fancy })
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }

    pub fn matches(&self, tag: &str) -> Match<'_> {
        let pattern = |i: usize| self.patterns.get(i).map_or("", String::as_str);
        if let Some(m) = self.set.matches(tag).iter().next() {
            return Match::Excluded(pattern(self.set_index.get(m).copied().unwrap_or(0)));
        }
        let mut undecided = None;
        for (i, re) in &self.fancy {
            match re.is_match(tag) {
                Ok(true) => return Match::Excluded(pattern(*i)),
                Ok(false) => {}
                Err(_) => undecided = undecided.or(Some(pattern(*i))),
            }
        }
        undecided.map_or(Match::NotExcluded, Match::Undecided)
    }
}

fn first_line(s: &str) -> &str {
    s.lines().last().unwrap_or(s).trim()
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

    #[test]
    fn whole_tag_is_matched() {
        let e = ex(&["latest", "^rc-.*$"]);
        assert_eq!(e.matches("latest"), Match::Excluded("latest"));
        assert_eq!(e.matches("latest2"), Match::NotExcluded);
        assert_eq!(e.matches("rc-1"), Match::Excluded("^rc-.*$"));
        assert_eq!(e.matches("v1"), Match::NotExcluded);
    }

    #[test]
    fn seed_patterns_with_perl_classes_load() {
        let e = ex(&[r"^v\d+\.\d+$", r"^pr-\d+$", "^.*-SNAPSHOT$"]);
        assert_eq!(e.matches("v1.2"), Match::Excluded(r"^v\d+\.\d+$"));
        assert_eq!(e.matches("v1.2.3"), Match::NotExcluded);
        assert_eq!(e.matches("1.0-SNAPSHOT"), Match::Excluded("^.*-SNAPSHOT$"));
    }

    #[test]
    fn look_ahead_protects_release_tags_only() {
        let p = r"^(?!v[0-9]+\.[0-9]+\.[0-9]+$).*$";
        let e = ex(&[p]);
        assert_eq!(e.matches("v1.2.3"), Match::NotExcluded);
        assert_eq!(e.matches("v1.2.3-rc1"), Match::Excluded(p));
        assert_eq!(e.matches("latest"), Match::Excluded(p));
    }

    #[test]
    fn bad_pattern_is_reported_with_its_index() {
        let err = Exclusions::compile(&["ok".into(), "(".into()]).unwrap_err();
        assert_eq!(err.0, 1);
    }

    #[test]
    fn runaway_backtracking_is_undecided_not_excluded() {
        // The back-reference keeps the whole pattern in fancy-regex's backtracking VM.
        let p = r"^(?=((a+)\2?)+b).*$";
        let e = ex(&[p]);
        assert_eq!(e.matches(&"a".repeat(100)), Match::Undecided(p));
    }
}
