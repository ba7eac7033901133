//! Doublestar globs (Harbor, STACKIT rule selectors) translated into regular expressions, so
//! that rules.rs can compile them into the same lazy DFA as everything else.
//!
//! This is a port of `globset` 0.4's parser and translation with `literal_separator(true)` (the
//! rules' semantics: `*` and `?` stay within one `/` segment, `**` crosses them, `[...]`, `{a,b}`,
//! `\` escapes), giving the same regex text. It is ours rather than the crate because module
//! size is a product target (<= 512 KiB): `globset` pulls its own matching engines and more of
//! `regex-automata` into the module even when only its translation is used. A native test
//! checks the port against `globset` itself.

use std::iter::Peekable;
use std::str::Chars;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Literal(char),
    /// `?`
    Any,
    /// `*`
    ZeroOrMore,
    /// `**/` at the start
    RecursivePrefix,
    /// `/**` at the end
    RecursiveSuffix,
    /// `/**/`
    RecursiveZeroOrMore,
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
    Alternates(Vec<Vec<Token>>),
}

/// Longest glob accepted (characters): selectors name projects, repositories and tags, none
/// longer than a few hundred characters; a longer one is a mistake or an attack on the load.
pub const MAX_GLOB_LENGTH: usize = 1024;
/// Deepest nesting of `{...}` accepted: translation recurses once per level (so does dropping
/// the tokens), and a module's stack is 1 MiB; Harbor globs rarely nest at all.
pub const MAX_NESTING: usize = 16;

/// The regex matching exactly the strings `glob` matches (anchored at both ends), or why the
/// glob is invalid.
pub fn to_regex(glob: &str) -> Result<String, String> {
    let length = glob.chars().count();
    if length > MAX_GLOB_LENGTH {
        return Err(format!("{length} characters, longer than {MAX_GLOB_LENGTH}"));
    }
    let mut p = Parser {
        chars: glob.chars().peekable(),
        prev: None,
        cur: None,
        alternates: Vec::new(),
        branches: vec![Vec::new()],
    };
    p.parse()?;
    if p.branches.len() > 1 {
        return Err("unclosed alternate group; missing '}' (maybe escape '{' with '[{]'?)".into());
    }
    let tokens = p.branches.pop().unwrap_or_default();
    let mut re = String::from("(?-u)^");
    // The glob `**` alone matches everything.
    if tokens == [Token::RecursivePrefix] {
        re.push_str(".*$");
        return Ok(re);
    }
    tokens_to_regex(&tokens, &mut re);
    re.push('$');
    Ok(re)
}

/// Whether `glob` can match a name holding a `/` (`true` when it does not parse: the caller
/// refuses it anyway). Negated classes and ranges spanning `/` can, as `**` and a `/` do.
pub fn can_match_slash(glob: &str) -> bool {
    let mut p = Parser {
        chars: glob.chars().peekable(),
        prev: None,
        cur: None,
        alternates: Vec::new(),
        branches: vec![Vec::new()],
    };
    if p.parse().is_err() || p.branches.len() > 1 {
        return true;
    }
    tokens_match_slash(&p.branches.pop().unwrap_or_default())
}

fn tokens_match_slash(tokens: &[Token]) -> bool {
    tokens.iter().any(|t| match t {
        Token::Literal(c) => *c == '/',
        Token::Any | Token::ZeroOrMore => false,
        Token::RecursivePrefix | Token::RecursiveSuffix | Token::RecursiveZeroOrMore => true,
        Token::Class { negated, ranges } => *negated != ranges.iter().any(|&(a, b)| a <= '/' && '/' <= b),
        Token::Alternates(branches) => branches.iter().any(|b| tokens_match_slash(b)),
    })
}

fn tokens_to_regex(tokens: &[Token], re: &mut String) {
    for token in tokens {
        match token {
            Token::Literal(c) => escape_into(*c, re),
            Token::Any => re.push_str("[^/]"),
            Token::ZeroOrMore => re.push_str("[^/]*"),
            Token::RecursivePrefix => re.push_str("(?:/?|.*/)"),
            Token::RecursiveSuffix => re.push_str("/.*"),
            Token::RecursiveZeroOrMore => re.push_str("(?:/|/.*/)"),
            Token::Class { negated, ranges } => {
                re.push('[');
                if *negated {
                    re.push('^');
                }
                for &(start, end) in ranges {
                    escape_into(start, re);
                    if start != end {
                        re.push('-');
                        escape_into(end, re);
                    }
                }
                re.push(']');
            }
            Token::Alternates(branches) => {
                let parts: Vec<String> = branches
                    .iter()
                    .map(|b| {
                        let mut part = String::new();
                        tokens_to_regex(b, &mut part);
                        part
                    })
                    .filter(|part| !part.is_empty())
                    .collect();
                // `{,}` has nothing to match; `()` would not compile.
                if !parts.is_empty() {
                    re.push_str("(?:");
                    re.push_str(&parts.join("|"));
                    re.push(')');
                }
            }
        }
    }
}

/// A literal in a byte-oriented (`(?-u)`) regex: ASCII meta characters escaped, other
/// characters as their UTF-8 bytes.
fn escape_into(c: char, re: &mut String) {
    if c.is_ascii() {
        if r"\.+*?()|[]{}^$#&-~".contains(c) {
            re.push('\\');
        }
        re.push(c);
        return;
    }
    let mut buf = [0; 4];
    for b in c.encode_utf8(&mut buf).bytes() {
        re.push_str(&format!("\\x{b:02x}"));
    }
}

struct Parser<'a> {
    chars: Peekable<Chars<'a>>,
    prev: Option<char>,
    cur: Option<char>,
    /// Where each open `{` started in `branches`.
    alternates: Vec<usize>,
    /// The token lists being built: the top level, then one per open alternative.
    branches: Vec<Vec<Token>>,
}

const UNOPENED: &str = "unopened alternate group; missing '{' (maybe escape '}' with '[}]'?)";

impl Parser<'_> {
    fn parse(&mut self) -> Result<(), String> {
        while let Some(c) = self.bump() {
            match c {
                '?' => self.push(Token::Any)?,
                '*' => self.parse_star()?,
                '[' => self.parse_class()?,
                '{' => {
                    if self.alternates.len() >= MAX_NESTING {
                        return Err(format!("alternate groups nested deeper than {MAX_NESTING}"));
                    }
                    self.alternates.push(self.branches.len());
                    self.branches.push(Vec::new());
                }
                '}' => {
                    let start = self.alternates.pop().ok_or(UNOPENED)?;
                    let alternates = self.branches.split_off(start.min(self.branches.len()));
                    self.push(Token::Alternates(alternates))?;
                }
                ',' if !self.alternates.is_empty() => self.branches.push(Vec::new()),
                '\\' => {
                    let c = self.bump().ok_or("dangling '\\'")?;
                    self.push(Token::Literal(c))?;
                }
                c => self.push(Token::Literal(c))?,
            }
        }
        Ok(())
    }

    fn push(&mut self, token: Token) -> Result<(), String> {
        self.branches.last_mut().ok_or(UNOPENED)?.push(token);
        Ok(())
    }

    fn parse_star(&mut self) -> Result<(), String> {
        let prev = self.prev;
        if self.chars.peek() != Some(&'*') {
            return self.push(Token::ZeroOrMore);
        }
        self.bump();
        let stars = |p: &mut Self| p.push(Token::ZeroOrMore).and_then(|()| p.push(Token::ZeroOrMore));
        if self.branches.last().map_or(true, Vec::is_empty) {
            // At the start of the glob or of an alternative.
            if self.chars.peek().is_some_and(|&c| c != '/') {
                return stars(self);
            }
            self.bump();
            return self.push(Token::RecursivePrefix);
        }
        if prev != Some('/') && (self.branches.len() <= 1 || (prev != Some(',') && prev != Some('{'))) {
            return stars(self);
        }
        let is_suffix = match self.chars.peek() {
            None => true,
            Some(',' | '}') if self.branches.len() >= 2 => true,
            Some('/') => {
                self.bump();
                false
            }
            _ => return stars(self),
        };
        // The `/` before `**` becomes part of the recursive token.
        let token = match self.branches.last_mut().and_then(Vec::pop) {
            Some(Token::RecursivePrefix) => Token::RecursivePrefix,
            Some(Token::RecursiveSuffix) => Token::RecursiveSuffix,
            _ if is_suffix => Token::RecursiveSuffix,
            _ => Token::RecursiveZeroOrMore,
        };
        self.push(token)
    }

    fn parse_class(&mut self) -> Result<(), String> {
        let mut ranges: Vec<(char, char)> = Vec::new();
        let negated = matches!(self.chars.peek(), Some('!' | '^'));
        if negated {
            self.bump();
        }
        let mut first = true;
        let mut in_range = false;
        loop {
            let c = self.bump().ok_or("unclosed character class; missing ']'")?;
            match c {
                // A `]` or `-` first is a literal.
                ']' if !first => break,
                '-' if !first && !in_range => in_range = true,
                c if in_range => {
                    if let Some(last) = ranges.last_mut() {
                        if c < last.0 {
                            return Err(format!("invalid range; '{}' > '{c}'", last.0));
                        }
                        last.1 = c;
                    }
                    in_range = false;
                }
                c => ranges.push((c, c)),
            }
            first = false;
        }
        if in_range {
            // A trailing `-` is a literal.
            ranges.push(('-', '-'));
        }
        self.push(Token::Class { negated, ranges })
    }

    fn bump(&mut self) -> Option<char> {
        self.prev = self.cur;
        self.cur = self.chars.next();
        self.cur
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    // The same tests run on wasm32 under wasm-bindgen-test (Node.js).
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn re(glob: &str) -> String {
        to_regex(glob).unwrap()
    }

    #[test]
    fn translations() {
        // Expected texts as globset 0.4.21 produces them with literal_separator(true).
        for (glob, want) in [
            ("a", "(?-u)^a$"),
            ("*", "(?-u)^[^/]*$"),
            ("**", "(?-u)^.*$"),
            ("?", "(?-u)^[^/]$"),
            ("a/**", "(?-u)^a/.*$"),
            ("**/a", "(?-u)^(?:/?|.*/)a$"),
            ("a/**/b", "(?-u)^a(?:/|/.*/)b$"),
            ("a**", "(?-u)^a[^/]*[^/]*$"),
            ("**a", "(?-u)^[^/]*[^/]*a$"),
            ("v*.*.*", r"(?-u)^v[^/]*\.[^/]*\.[^/]*$"),
            ("[a-c]x", "(?-u)^[a-c]x$"),
            ("[!a]", "(?-u)^[^a]$"),
            ("[^a]", "(?-u)^[^a]$"),
            ("[]a]", r"(?-u)^[\]a]$"),
            ("[-a]", r"(?-u)^[\-a]$"),
            ("[a-]", r"(?-u)^[a\-]$"),
            ("{a,b}", "(?-u)^(?:a|b)$"),
            ("{a,{b,c}}", "(?-u)^(?:a|(?:b|c))$"),
            ("{,a}", "(?-u)^(?:a)$"),
            ("{}", "(?-u)^$"),
            ("{**/a,b/**}", "(?-u)^(?:(?:/?|.*/)a|b/.*)$"),
            ("x{a,**}", "(?-u)^x(?:a|[^/]*[^/]*)$"),
            ("x{a,b/**}", "(?-u)^x(?:a|b/.*)$"),
            (r"a\*b", r"(?-u)^a\*b$"),
            ("a,b", "(?-u)^a,b$"),
            // `**` beside a `,` or `{`, which only opens an alternative inside braces, and
            // after a recursive prefix: globset 0.4.21's texts, odd ones included.
            ("a,**", "(?-u)^a,[^/]*[^/]*$"),
            ("x{a,b**}", "(?-u)^x(?:a|b[^/]*[^/]*)$"),
            (r"x{a\,**}", "(?-u)^x(?:a/.*)$"),
            ("a/**,b", "(?-u)^a/[^/]*[^/]*,b$"),
            ("**/**", "(?-u)^.*$"),
            ("{**/**,c}", "(?-u)^(?:(?:/?|.*/)|c)$"),
            ("[a-a]", "(?-u)^[a]$"),
            ("a.b+c(d)|e^$#&-~", r"(?-u)^a\.b\+c\(d\)\|e\^\$\#\&\-\~$"),
            ("é", r"(?-u)^\xc3\xa9$"),
        ] {
            assert_eq!(re(glob), want, "{glob}");
        }
    }

    #[test]
    fn errors() {
        for (glob, says) in [
            ("{a,b", "unclosed alternate group"),
            ("a}", "unopened alternate group"),
            ("[a", "unclosed character class"),
            ("[z-a]", "invalid range"),
            ("a\\", "dangling"),
        ] {
            let e = to_regex(glob).unwrap_err();
            assert!(e.contains(says), "{glob}: {e}");
        }
    }

    /// Differential check against the crate this ports (native only: globset is a dev-dependency).
    #[cfg(not(target_arch = "wasm32"))]
    mod against_globset {
        use super::super::to_regex;
        use proptest::prelude::*;

        fn globset(glob: &str) -> Result<String, ()> {
            globset::GlobBuilder::new(glob)
                .literal_separator(true)
                .build()
                .map(|g| g.regex().to_string())
                .map_err(|_| ())
        }

        proptest! {
            #![proptest_config(crate::proptests::cases(4000))]
            #[test]
            fn same_regex_or_both_refuse(glob in r"[az/*?\[\]!^{},\\.é-]{0,12}") {
                prop_assert_eq!(to_regex(&glob).map_err(|_| ()), globset(&glob), "{}", glob);
            }
        }
    }
}
