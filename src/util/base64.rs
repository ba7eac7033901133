//! Base64, the two small uses the filter has: etcd's gateway (`bytes` fields: standard alphabet,
//! padded) and credentials (`Authorization: Basic`, standard; a JWT's segments, URL-safe,
//! unpadded). Written here rather than taken from a crate: two dozen lines against the module's
//! size budget.

const STANDARD: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding.
pub fn encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            let c = if i <= chunk.len() {
                STANDARD.get((n >> (18 - 6 * i) & 63) as usize).copied().unwrap_or(b'=')
            } else {
                b'='
            };
            out.push(char::from(c));
        }
    }
    out
}

/// Decodes standard or URL-safe base64, padding optional; `None` on any other byte, or on
/// leftover bits that are not the zero padding of a valid length.
pub fn decode(text: &str) -> Option<Vec<u8>> {
    let text = text.trim_end_matches('=');
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes() {
        let v = match c {
            b'-' => 62,
            b'_' => 63,
            _ => STANDARD.iter().position(|b| *b == c)? as u32,
        };
        acc = (acc << 6 | v) & 0xffff;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits & 0xff) as u8);
        }
    }
    (bits < 6 && acc & ((1 << bits) - 1) == 0).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn round_trips_and_matches_the_standard() {
        for (raw, enc) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("/immutable-tags/a:v1", "L2ltbXV0YWJsZS10YWdzL2E6djE="),
        ] {
            assert_eq!(encode(raw.as_bytes()), enc);
            assert_eq!(decode(enc).unwrap(), raw.as_bytes());
        }
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(decode(&encode(&all)).unwrap(), all);
        assert_eq!(decode("Zg").unwrap(), b"f");
    }

    #[test]
    fn reads_both_alphabets_and_refuses_the_rest() {
        // 0xfb 0xff: "+/8" standard, "-_8" URL-safe (a JWT segment's alphabet).
        assert_eq!(decode("+/8=").unwrap(), [0xfb, 0xff]);
        assert_eq!(decode("-_8").unwrap(), [0xfb, 0xff]);
        assert_eq!(decode("Z!=="), None);
        assert_eq!(decode("Zh=="), None, "non-zero padding bits");
        assert_eq!(decode("Z"), None, "a lone sextet is not a byte");
        assert_eq!(decode("A"), None, "not even an all-zero one");
        assert_eq!(decode("Zm9vA==="), None, "nor one after whole groups");
    }
}
