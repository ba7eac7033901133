//! Sets of regular expressions compiled into one lazy DFA (`regex-automata`'s `hybrid`), shared
//! by the exclusion patterns and the rules.
//!
//! ASCII mode only: tags and repository names are ASCII, so Unicode tables would only cost
//! module size (`\d`, `\w`, `\s` and `(?i)` are ASCII classes, `.` is any byte but `\n`). Only the
//! lazy DFA is built: no backtracking, so matching is linear in the input whatever the
//! patterns, and one pass over the input serves every pattern of a set.
//!
//! The searches cannot fail as configured here (no quit bytes, no give-up limit on cache
//! clears); callers still handle `Err` on the safe side rather than trust that.

use regex_automata::hybrid::dfa::{Cache, OverlappingState, DFA};
use regex_automata::nfa::thompson;
use regex_automata::util::syntax;
use regex_automata::{Anchored, Input, MatchKind};
use std::cell::RefCell;

/// The lazy DFA could not finish a search (not as configured here; see the module comment).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unfinished;

/// A lazy DFA and its scratch space. One VM per worker thread: the `RefCell` is never
/// contended (a fresh scratch is made if it ever were).
#[derive(Debug, Clone)]
pub struct Matcher {
    dfa: DFA,
    scratch: RefCell<Scratch>,
}

#[derive(Debug, Clone)]
struct Scratch {
    cache: Cache,
    /// For `every_match`: which pattern IDs were already reported (reset after each search,
    /// at a cost in proportion to the hits, not to the number of patterns).
    seen: Vec<bool>,
}

impl Matcher {
    /// Leftmost-first semantics, for `find`: the first pattern (in order) that matches wins.
    pub fn new(patterns: &[String]) -> Result<Matcher, String> {
        Matcher::build(patterns, MatchKind::LeftmostFirst)
    }

    /// Every pattern can report its matches, for `every_match`.
    pub fn all(patterns: &[String]) -> Result<Matcher, String> {
        Matcher::build(patterns, MatchKind::All)
    }

    fn build(patterns: &[String], kind: MatchKind) -> Result<Matcher, String> {
        let dfa = DFA::builder()
            .configure(DFA::config().match_kind(kind))
            .syntax(syntax::Config::new().unicode(false).utf8(false))
            .thompson(thompson::Config::new().utf8(false))
            .build_many(patterns)
            .map_err(|e| error_text(&e))?;
        let seen = if kind == MatchKind::All { vec![false; patterns.len()] } else { Vec::new() };
        let scratch = RefCell::new(Scratch { cache: dfa.create_cache(), seen });
        Ok(Matcher { dfa, scratch })
    }

    fn with_scratch<T>(&self, run: impl FnOnce(&mut Scratch) -> T) -> T {
        match self.scratch.try_borrow_mut() {
            Ok(mut s) => run(&mut s),
            Err(_) => run(&mut Scratch {
                cache: self.dfa.create_cache(),
                seen: vec![false; self.dfa.pattern_len()],
            }),
        }
    }

    /// The pattern that matches at the start of `hay` (`Err`: the DFA gave up).
    pub fn find(&self, hay: &str) -> Result<Option<usize>, Unfinished> {
        let input = Input::new(hay.as_bytes()).anchored(Anchored::Yes);
        let found = self.with_scratch(|s| self.dfa.try_search_fwd(&mut s.cache, &input));
        found.map(|m| m.map(|hm| hm.pattern().as_usize())).map_err(|_| Unfinished)
    }

    /// Every pattern that matches anywhere in `hay`, in one overlapping pass (for a matcher
    /// built with `all`). Each ID appears once, in no particular order.
    pub fn every_match(&self, hay: &str) -> Result<Vec<usize>, Unfinished> {
        let input = Input::new(hay.as_bytes());
        self.with_scratch(|s| {
            let mut hits = Vec::new();
            let mut state = OverlappingState::start();
            let outcome = loop {
                if self.dfa.try_search_overlapping_fwd(&mut s.cache, &input, &mut state).is_err() {
                    break Err(Unfinished);
                }
                let Some(m) = state.get_match() else { break Ok(()) };
                let id = m.pattern().as_usize();
                if let Some(seen) = s.seen.get_mut(id) {
                    if !*seen {
                        *seen = true;
                        hits.push(id);
                    }
                }
            };
            for &id in &hits {
                if let Some(seen) = s.seen.get_mut(id) {
                    *seen = false;
                }
            }
            outcome.map(|()| hits)
        })
    }
}

/// Whether `pattern`, searched anywhere as the rules search, matches some string of at most
/// `max_len` bytes whose first byte passes `first` and every other `rest` (the characters an OCI
/// tag or name may hold): `check` warns on a selector that cannot. Explores the lazy DFA
/// breadth first; `true` whenever unsure (a pattern that does not compile here, too many states).
pub fn can_match(pattern: &str, first: fn(u8) -> bool, rest: fn(u8) -> bool, max_len: usize) -> bool {
    let Ok(dfa) = DFA::builder()
        .syntax(syntax::Config::new().unicode(false).utf8(false))
        .thompson(thompson::Config::new().utf8(false))
        .build(pattern)
    else {
        return true;
    };
    let mut cache = dfa.create_cache();
    let Ok(start) = dfa.start_state_forward(&mut cache, &Input::new(&b""[..])) else { return true };
    let mut seen = std::collections::HashSet::from([start]);
    let mut frontier = vec![start];
    for depth in 0..max_len {
        let allowed = if depth == 0 { first } else { rest };
        let mut next = Vec::new();
        for &from in &frontier {
            for b in (0..=255u8).filter(|&b| allowed(b)) {
                let Ok(to) = dfa.next_state(&mut cache, from, b) else { return true };
                // A match state is one byte late: something before `b` (a prefix of a longer
                // valid string, which the search also matches) matched; or it matches at the end.
                if to.is_match() || dfa.next_eoi_state(&mut cache, to).map_or(true, |e| e.is_match()) {
                    return true;
                }
                if !to.is_dead() && seen.insert(to) {
                    next.push(to);
                }
            }
            // State IDs are only stable while the cache is not cleared.
            if cache.clear_count() > 0 || seen.len() > 10_000 {
                return true;
            }
        }
        if next.is_empty() {
            return false;
        }
        frontier = next;
    }
    false
}

/// regex-syntax errors span several lines (pattern, caret, message); keep the message, on one.
pub fn error_text(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s = inner.to_string();
        src = inner.source();
    }
    let msg = s.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>();
    msg.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    // The same tests run on wasm32 under wasm-bindgen-test (Node.js).
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn set(p: &[&str]) -> Matcher {
        Matcher::all(&p.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }
    fn every(m: &Matcher, hay: &str) -> Vec<usize> {
        let mut v = m.every_match(hay).unwrap();
        v.sort_unstable();
        v
    }

    #[test]
    fn every_match_reports_each_pattern_once_wherever_it_matches() {
        let m = set(&["a", "^a", "a$", "b+", "^x$", ".*"]);
        assert_eq!(every(&m, "aba"), [0, 1, 2, 3, 5]);
        assert_eq!(every(&m, "x"), [4, 5]);
        assert_eq!(every(&m, "bab"), [0, 3, 5]);
        // The scratch is reset between searches.
        assert_eq!(every(&m, "aba"), [0, 1, 2, 3, 5]);
        assert_eq!(every(&set(&["^a$", "q"]), "b"), Vec::<usize>::new());
    }

    #[test]
    fn an_empty_set_matches_nothing() {
        let m = Matcher::all(&[]).unwrap();
        assert_eq!(every(&m, "anything"), Vec::<usize>::new());
        assert_eq!(every(&m, ""), Vec::<usize>::new());
    }

    #[test]
    fn find_is_anchored_and_leftmost_first() {
        let m = Matcher::new(&["b".to_string(), "a.*".to_string(), "ab".to_string()]).unwrap();
        assert_eq!(m.find("ab"), Ok(Some(1)));
        assert_eq!(m.find("xab"), Ok(None));
    }

    #[test]
    fn can_match_explores_only_the_allowed_characters() {
        let lower = |b: u8| b.is_ascii_lowercase();
        let tag = |b: u8| b.is_ascii_alphanumeric();
        assert!(can_match("^ab$", lower, lower, 10));
        assert!(!can_match("^Ab$", lower, lower, 10), "upper case");
        assert!(!can_match(r"^v\d+$x", tag, tag, 128), "nothing after the end");
        assert!(can_match(r"^v\d+$", tag, tag, 128));
        assert!(!can_match("^abc$", lower, lower, 2), "too long");
        assert!(can_match("b", lower, lower, 3), "unanchored: found anywhere");
        assert!(!can_match("^$", lower, lower, 3), "only the empty string");
        assert!(can_match("x*", lower, lower, 3), "the empty match is in every string");
        assert!(!can_match("^1", lower, tag, 3), "the first byte has its own alphabet");
        assert!(can_match("^a1", lower, tag, 3));
        assert!(can_match("(", lower, lower, 3), "unsure: does not compile here");
    }

    #[test]
    fn contended_scratch_still_answers() {
        let m = set(&["x"]);
        let _held = m.scratch.borrow_mut();
        assert_eq!(m.every_match("axb"), Ok(vec![0]));
        assert_eq!(m.find("xb"), Ok(Some(0)));
    }

    #[test]
    fn ascii_mode_and_one_line_errors() {
        let m = set(&[r"^\d+$", r"\w"]);
        assert_eq!(every(&m, "123"), [0, 1]);
        assert_eq!(every(&m, "\u{661}"), Vec::<usize>::new(), "\\d and \\w are ASCII");
        let e = Matcher::all(&["(x".to_string()]).unwrap_err();
        assert!(!e.contains('\n') && e.contains("unclosed group"), "{e}");
        let e = Matcher::all(&[r"\p{Greek}".to_string()]).unwrap_err();
        assert!(e.contains("Unicode"), "{e}");
    }
}
