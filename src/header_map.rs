//! The proxy-wasm ABI's encoding of a header map: a little-endian u32 count, then a
//! (key length, value length) u32 pair per entry, then each key and value followed by a NUL.
//! Pure, so that the decoder, which reads bytes from the host, is tested natively: it never
//! indexes out of bounds and drops what is not UTF-8 rather than failing the request.

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

fn u32_at(bytes: &[u8], at: usize) -> Option<usize> {
    let b: [u8; 4] = bytes.get(at..at.checked_add(4)?)?.try_into().ok()?;
    usize::try_from(u32::from_le_bytes(b)).ok()
}

/// Decodes a map. A truncated or inconsistent buffer yields the entries read before the fault;
/// an entry that is not UTF-8 is skipped.
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
        if let (Ok(k), Ok(v)) = (std::str::from_utf8(key), std::str::from_utf8(value)) {
            out.push((k.to_string(), v.to_string()));
        }
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
    fn non_utf8_entries_are_skipped() {
        let mut bytes = encode(&[("a", "x"), ("b", "y")]);
        let at = bytes.len() - 2; // the value "y"
        bytes[at] = 0xff;
        assert_eq!(decode(&bytes), vec![("a".to_string(), "x".to_string())]);
    }
}
