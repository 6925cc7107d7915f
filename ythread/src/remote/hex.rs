//! Bytes as hex text, as headers carry them: signatures (`signing.rs`)
//! and trace context (`observe.rs`).

const DIGITS: &[u8; 16] = b"0123456789abcdef";

/// Two lowercase hex digits a byte.
pub(super) fn encode(bytes: &[u8]) -> String {
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        text.push(char::from(DIGITS[usize::from(byte >> 4)]));
        text.push(char::from(DIGITS[usize::from(byte & 15)]));
    }
    text
}

/// Reads `text`, two hex digits a byte, into `out`; `None` unless `text`
/// is exactly that long and all digits (uppercase ones too if `uppercase`).
pub(super) fn decode(text: &[u8], out: &mut [u8], uppercase: bool) -> Option<()> {
    if text.len() != out.len() * 2 {
        return None;
    }
    let digit = |b: u8| match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' if uppercase => Some(b - b'A' + 10),
        _ => None,
    };
    for (byte, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        *byte = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_read_back_and_only_digits_of_the_length_are_read() {
        let bytes = [0x00, 0x7f, 0xa5, 0xff];
        let text = encode(&bytes);
        assert_eq!(text, "007fa5ff");
        let mut out = [0; 4];
        assert_eq!(decode(text.as_bytes(), &mut out, false), Some(()));
        assert_eq!(out, bytes);
        assert_eq!(decode(b"007FA5FF", &mut out, false), None);
        assert_eq!(decode(b"007FA5FF", &mut out, true), Some(()));
        assert_eq!(out, bytes);
        for bad in [&b"007fa5f"[..], b"007fa5fff", b"007fa5fg", b"+07fa5ff", b""] {
            assert_eq!(decode(bad, &mut out, true), None, "{bad:?}");
        }
    }
}
