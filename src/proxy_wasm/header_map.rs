//! The proxy-wasm ABI's encoding of a header map: a little-endian u32 count, then a
//! (key length, value length) u32 pair per entry, then each key and value followed by a NUL.
//! Pure, so that the decoder, which reads bytes from the host, is tested natively: it never
//! indexes out of bounds, and reads every byte (see [`text`]): a value that is not UTF-8 is
//! never dropped nor taken for an absent one.

pub fn encode(pairs: &[(&str, &str)]) -> Vec<u8> {
    let len = |n: usize| u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes();
    let mut out = Vec::new();
    out.extend_from_slice(&len(pairs.len()));
    for (k, v) in pairs {
        out.extend_from_slice(&len(k.len()));
        out.extend_from_slice(&len(v.len()));
    }
    for (k, v) in pairs {
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }
    out
}

/// A header value (or name) as the filter reads it: every byte at or above 0x80 and every ASCII
/// control is percent-encoded (`%XX`, upper-case hex); every other byte is kept as it is.
///
/// Why: HTTP/2 lets a `:path` carry bytes that are not UTF-8 (and Go's server accepts them in a
/// query). Read as "absent", such a path looked like an empty one, which names no manifest, and
/// the write went upstream unjudged. Encoded, it keeps its meaning: the registry routes on the
/// decoded path, where `%FF` and the byte 0xFF are the same, so `/v2/a/manifests/v1?x=%FF` is a
/// push of `v1`, and a name or tag holding such a byte is invalid (it decodes to no UTF-8).
pub fn text(bytes: Vec<u8>) -> String {
    let plain = |b: &u8| (0x20..0x7f).contains(b);
    if bytes.iter().all(plain) {
        // Printable ASCII: always UTF-8, kept without a copy.
        return String::from_utf8(bytes).unwrap_or_default();
    }
    let mut out = String::with_capacity(bytes.len() * 3);
    for b in bytes {
        if plain(&b) {
            out.push(char::from(b));
        } else {
            let hex =
                |n: u8| char::from(b"0123456789ABCDEF".get(usize::from(n & 0xf)).copied().unwrap_or(b'0'));
            out.extend(['%', hex(b >> 4), hex(b)]);
        }
    }
    out
}

fn u32_at(bytes: &[u8], at: usize) -> Option<usize> {
    let b: [u8; 4] = bytes.get(at..at.checked_add(4)?)?.try_into().ok()?;
    usize::try_from(u32::from_le_bytes(b)).ok()
}

/// Decodes a map. A truncated or inconsistent buffer yields the entries read before the fault;
/// names and values are read with [`text`].
pub fn decode(bytes: &[u8]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let Some(count) = u32_at(bytes, 0) else { return out };
    let mut sizes = 4usize;
    let mut data = match count.checked_mul(8).and_then(|n| n.checked_add(4)) {
        Some(d) if d <= bytes.len() => d,
        _ => return out,
    };
    for _ in 0..count {
        let (Some(kl), Some(vl)) = (u32_at(bytes, sizes), u32_at(bytes, sizes + 4)) else { break };
        sizes += 8;
        let key = data.checked_add(kl).and_then(|end| bytes.get(data..end));
        let value_start = data.saturating_add(kl).saturating_add(1);
        let value = value_start.checked_add(vl).and_then(|end| bytes.get(value_start..end));
        let (Some(key), Some(value)) = (key, value) else { break };
        data = value_start.saturating_add(vl).saturating_add(1);
        out.push((text(key.to_vec()), text(value.to_vec())));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    // The same tests run on wasm32 under wasm-bindgen-test (Node.js).
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn round_trip() {
        let pairs = [(":status", "201"), ("location", "/v2/a/manifests/sha256:00"), ("empty", "")];
        let got = decode(&encode(&pairs));
        let want: Vec<(String, String)> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn truncated_or_lying_buffers_never_panic() {
        let full = encode(&[("a", "1"), ("bb", "22")]);
        for cut in 0..full.len() {
            let got = decode(&full[..cut]);
            assert!(got.len() <= 2);
        }
        // A count far larger than the buffer.
        assert!(decode(&[255, 255, 255, 255, 0, 0]).is_empty());
        // Lengths pointing past the end.
        let mut lying = encode(&[("a", "1")]);
        lying[4] = 200;
        assert!(decode(&lying).is_empty());
    }

    #[test]
    fn non_utf8_entries_are_read_percent_encoded() {
        let mut bytes = encode(&[("a", "x"), ("b", "y")]);
        let at = bytes.len() - 2; // the value "y"
        bytes[at] = 0xff;
        let got = decode(&bytes);
        assert_eq!(got, vec![("a".to_string(), "x".to_string()), ("b".to_string(), "%FF".to_string())]);
    }

    #[test]
    fn text_encodes_high_bytes_and_controls_only() {
        assert_eq!(text(b"/v2/a/manifests/v1?x=1%2F".to_vec()), "/v2/a/manifests/v1?x=1%2F");
        assert_eq!(text(b"/v2/a/manifests/v1?x=\xff".to_vec()), "/v2/a/manifests/v1?x=%FF");
        assert_eq!(text("\u{e9}".as_bytes().to_vec()), "%C3%A9", "UTF-8 above ASCII too: one rule");
        assert_eq!(text(b"a\x00\x01\t\x7f ~".to_vec()), "a%00%01%09%7F ~");
        assert_eq!(text(Vec::new()), "");
        for b in 0..=255u8 {
            let t = text(vec![b]);
            assert!(t.bytes().all(|c| (0x20..0x7f).contains(&c)), "{b:#x} -> {t:?}");
        }
    }
}
