//! Domain names as the lookup core sees them: lowercase DNS wire format
//! (`\x06tiktok\x03com\x00`), so every suffix at a label boundary is itself a name.
//! Parsing text names (IDNA included) lives here; reading names off packets lives in `wire.rs`.

use std::fmt::Write as _;

/// The longest name in wire format (RFC 1035 §3.1).
pub const MAX_WIRE_LEN: usize = 255;
const MAX_LABEL_LEN: usize = 63;

/// Why a text name could not be made into a wire name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("empty name")]
    Empty,
    #[error("empty label")]
    EmptyLabel,
    #[error("label longer than 63 bytes")]
    LabelTooLong,
    #[error("name longer than 253 characters")]
    TooLong,
    #[error("character {0:?} is not allowed in a domain name")]
    BadChar(char),
    #[error("not a valid internationalized name")]
    Idna,
    #[error("an IP address is not a domain name")]
    IpAddress,
}

/// Parses a text name (`Www.Example.COM.`, `bücher.example`) into lowercase wire format.
/// Unicode names become their IDNA (punycode) form; `_` is accepted as in real hostnames.
pub fn from_text(text: &str) -> Result<Vec<u8>, NameError> {
    let mut wire = Vec::with_capacity(text.len() + 2);
    from_text_into(text, &mut wire)?;
    Ok(wire)
}

/// As [`from_text`], into `wire` (cleared first), so a caller parsing many names can reuse
/// one buffer.
pub fn from_text_into(text: &str, wire: &mut Vec<u8>) -> Result<(), NameError> {
    wire.clear();
    let text = text.strip_suffix('.').unwrap_or(text);
    if text.is_empty() {
        return Err(NameError::Empty);
    }
    if text.parse::<std::net::IpAddr>().is_ok() {
        return Err(NameError::IpAddress);
    }
    let ascii;
    let text = if text.is_ascii() {
        text
    } else {
        ascii = idna::domain_to_ascii(text).map_err(|_| NameError::Idna)?;
        ascii.as_str()
    };
    if text.len() > MAX_WIRE_LEN - 2 {
        return Err(NameError::TooLong);
    }
    for label in text.split('.') {
        if label.is_empty() {
            return Err(NameError::EmptyLabel);
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(NameError::LabelTooLong);
        }
        wire.push(label.len() as u8);
        for c in label.chars() {
            if !(c.is_ascii_alphanumeric() || c == '-' || c == '_') {
                return Err(NameError::BadChar(c));
            }
            wire.push(c.to_ascii_lowercase() as u8);
        }
    }
    wire.push(0);
    Ok(())
}

/// Renders a wire name as dotted text without the final dot (`.` for the root).
pub fn to_text(wire: &[u8]) -> String {
    let mut text = String::with_capacity(wire.len());
    for label in labels(wire) {
        if !text.is_empty() {
            text.push('.');
        }
        for &b in label {
            if b.is_ascii_graphic() && b != b'.' && b != b'\\' {
                text.push(b as char);
            } else {
                let _ = write!(text, "\\{b:03}");
            }
        }
    }
    if text.is_empty() {
        text.push('.');
    }
    text
}

/// The labels of a well-formed wire name, left to right.
pub fn labels(wire: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut at = 0;
    std::iter::from_fn(move || {
        let len = *wire.get(at)? as usize;
        if len == 0 {
            return None;
        }
        let label = wire.get(at + 1..at + 1 + len)?;
        at += 1 + len;
        Some(label)
    })
}

/// Every suffix of a well-formed wire name that starts at a label, longest first, with its
/// offset in `wire`; the root itself is not yielded. `a.b.c` gives `a.b.c`, `b.c`, `c`.
pub fn suffixes(wire: &[u8]) -> impl Iterator<Item = (usize, &[u8])> {
    let mut at = 0;
    std::iter::from_fn(move || {
        let len = *wire.get(at)? as usize;
        if len == 0 {
            return None;
        }
        let start = at;
        at += 1 + len;
        Some((start, &wire[start..]))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trips_through_wire_lowercased() {
        let wire = from_text("Www.TikTok.com.").unwrap();
        assert_eq!(wire, b"\x03www\x06tiktok\x03com\x00");
        assert_eq!(to_text(&wire), "www.tiktok.com");
    }

    #[test]
    fn unicode_names_become_punycode() {
        assert_eq!(
            to_text(&from_text("bücher.example").unwrap()),
            "xn--bcher-kva.example"
        );
    }

    #[test]
    fn bad_names_are_rejected_with_a_reason() {
        let cases = [
            ("", NameError::Empty),
            ("a..b", NameError::EmptyLabel),
            ("a b.com", NameError::BadChar(' ')),
            ("ads.example.com/path", NameError::BadChar('/')),
            ("10.0.0.1", NameError::IpAddress),
            (&"x".repeat(64), NameError::LabelTooLong),
        ];
        for (text, err) in cases {
            assert_eq!(from_text(text), Err(err), "{text:?}");
        }
        let long = vec!["abcdefghi"; 26].join(".");
        assert_eq!(from_text(&long), Err(NameError::TooLong));
    }

    #[test]
    fn suffixes_walk_label_boundaries_longest_first() {
        let wire = from_text("a.bb.ccc").unwrap();
        let got: Vec<String> = suffixes(&wire).map(|(_, s)| to_text(s)).collect();
        assert_eq!(got, ["a.bb.ccc", "bb.ccc", "ccc"]);
        let offsets: Vec<usize> = suffixes(&wire).map(|(o, _)| o).collect();
        assert_eq!(offsets, [0, 2, 5]);
    }
}
