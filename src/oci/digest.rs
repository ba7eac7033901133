//! Content digests (`algorithm:encoded`), as registries report them in
//! `Docker-Content-Digest` and as the filter computes them over a pushed manifest.

use sha2::{Digest as _, Sha256, Sha512};
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    Sha256,
    Sha512,
}

impl Algorithm {
    fn name(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }
    fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }
}

/// A validated digest. Only the algorithms registries actually use are accepted, so two
/// digests compare equal exactly when they name the same content.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Digest {
    algorithm: Algorithm,
    hex: String,
}

impl Digest {
    /// Parses `sha256:<64 lowercase hex>` or `sha512:<128 lowercase hex>`.
    pub fn parse(s: &str) -> Option<Digest> {
        let (alg, hex) = s.split_once(':')?;
        let algorithm = match alg {
            "sha256" => Algorithm::Sha256,
            "sha512" => Algorithm::Sha512,
            _ => return None,
        };
        let ok = hex.len() == algorithm.hex_len()
            && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        ok.then(|| Digest { algorithm, hex: hex.to_string() })
    }

    pub fn of(algorithm: Algorithm, bytes: &[u8]) -> Digest {
        let hex = match algorithm {
            Algorithm::Sha256 => hex(&Sha256::digest(bytes)),
            Algorithm::Sha512 => hex(&Sha512::digest(bytes)),
        };
        Digest { algorithm, hex }
    }

    pub fn sha256(bytes: &[u8]) -> Digest {
        Self::of(Algorithm::Sha256, bytes)
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}"); // writing to a String cannot fail
    }
    s
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm.name(), self.hex)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    // The same tests run on wasm32 under wasm-bindgen-test (Node.js).
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn sha256_of_empty_is_the_known_value() {
        assert_eq!(
            Digest::sha256(b"").to_string(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn parse_round_trips_and_rejects_bad_input() {
        let d = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert_eq!(Digest::parse(d).map(|d| d.to_string()).as_deref(), Some(d));
        assert_eq!(Digest::parse(&d.to_uppercase()), None);
        assert_eq!(Digest::parse("sha256:abc"), None);
        assert_eq!(Digest::parse("md5:e3b0c44298fc1c149afbf4c8996fb924"), None);
        assert_eq!(Digest::parse(""), None);
        let g = format!("{}g", &d[..d.len() - 1]);
        assert_eq!(Digest::parse(&g), None);
    }

    #[test]
    fn sha512_is_computed_and_parsed() {
        let d = Digest::of(Algorithm::Sha512, b"x");
        assert_eq!(d.algorithm(), Algorithm::Sha512);
        assert_eq!(Digest::parse(&d.to_string()), Some(d));
    }
}
