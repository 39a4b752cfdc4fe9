//! The ways a client goes around the resolver, as portvakt names them (the `kind` label of
//! `portvakt_bypass_attempts_total`), the built-in names that stop some of them (Firefox's
//! DoH canary, iCloud Private Relay and DDR discovery), and the shape of Telegram's fallback
//! configuration in a TXT answer, whatever name carries it. Which segment handles which is
//! the policy's; the answers are `reply.rs`'s.

use serde::Deserialize;

use crate::wire::Record;

/// A kind of bypass attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BypassKind {
    /// Firefox asks `use-application-dns.net`: NXDOMAIN keeps its default DoH off.
    Canary,
    /// iCloud Private Relay (`mask.icloud.com`, `mask-h2.icloud.com`): a negative answer
    /// for every type turns it off for the network.
    PrivateRelay,
    /// DDR discovery (`_dns.resolver.arpa` SVCB, RFC 9462): NODATA, so clients do not upgrade
    /// to an encrypted resolver that is not portvakt.
    Ddr,
    /// A name of a public DoH/DoT/DoQ service (a list tagged `bypass = "encrypted_dns_endpoint"`).
    EncryptedDnsEndpoint,
    /// Telegram's fallback configuration lookups (a list tagged `bypass = "telegram_fallback"`).
    TelegramFallback,
    /// An HTTPS/SVCB answer carried ECH, removed so the TLS server name stays visible.
    Ech,
}

impl BypassKind {
    pub const ALL: [BypassKind; 6] = [
        BypassKind::Canary,
        BypassKind::PrivateRelay,
        BypassKind::Ddr,
        BypassKind::EncryptedDnsEndpoint,
        BypassKind::TelegramFallback,
        BypassKind::Ech,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BypassKind::Canary => "canary",
            BypassKind::PrivateRelay => "private_relay",
            BypassKind::Ddr => "ddr",
            BypassKind::EncryptedDnsEndpoint => "encrypted_dns_endpoint",
            BypassKind::TelegramFallback => "telegram_fallback",
            BypassKind::Ech => "ech",
        }
    }
}

/// The built-in names (lowercase wire format) and the kind each stops; each covers the names
/// below it too.
const BUILT_IN: [(&[u8], BypassKind); 5] = [
    (b"\x13use-application-dns\x03net\x00", BypassKind::Canary),
    (b"\x04mask\x06icloud\x03com\x00", BypassKind::PrivateRelay),
    (
        b"\x07mask-h2\x06icloud\x03com\x00",
        BypassKind::PrivateRelay,
    ),
    (
        b"\x0bmask-canary\x06icloud\x03com\x00",
        BypassKind::PrivateRelay,
    ),
    (b"\x04_dns\x08resolver\x04arpa\x00", BypassKind::Ddr),
];

/// The built-in bypass name `name` (lowercase wire format) is, or is below, if any, with where
/// that built-in name starts in `name`. Asked for every query of a segment with bypass
/// handling, so the last 8 bytes are compared first: no built-in name shares them with most
/// names.
pub fn built_in(name: &[u8]) -> Option<(BypassKind, usize)> {
    let at = name.len().checked_sub(8)?;
    let tail = u64::from_le_bytes(name[at..].try_into().expect("8 bytes"));
    if !TAILS.contains(&tail) {
        return None;
    }
    BUILT_IN.iter().find_map(|&(zone, kind)| {
        let at = name.len().checked_sub(zone.len())?;
        (name.ends_with(zone) && is_label_start(name, at)).then_some((kind, at))
    })
}

/// The last 8 bytes of each built-in name, as a number.
const TAILS: [u64; BUILT_IN.len()] = {
    let mut tails = [0; BUILT_IN.len()];
    let mut i = 0;
    while i < BUILT_IN.len() {
        tails[i] = tail8(BUILT_IN[i].0);
        i += 1;
    }
    tails
};

const fn tail8(zone: &[u8]) -> u64 {
    let n = zone.len();
    u64::from_le_bytes([
        zone[n - 8],
        zone[n - 7],
        zone[n - 6],
        zone[n - 5],
        zone[n - 4],
        zone[n - 3],
        zone[n - 2],
        zone[n - 1],
    ])
}

/// Whether a label starts at `at` in `name` (walking its length bytes from the start).
fn is_label_start(name: &[u8], at: usize) -> bool {
    let mut i = 0;
    while i < at {
        i += 1 + name[i] as usize;
    }
    i == at
}

/// TXT records' type.
const TYPE_TXT: u16 = 16;

/// Characters of Telegram's fallback configuration as its clients read it: 256 bytes in
/// standard base64 with padding.
const TELEGRAM_CONFIG_CHARS: usize = 344;

/// Whether the TXT records among `answers` of `msg` carry Telegram's fallback configuration
/// ("simple config"), as its clients read one: each record's text, longest first, joined,
/// keeping only base64 characters, is 344 characters of standard base64 that decode to exactly
/// 256 bytes (an RSA-2048 block). The name is whatever the server chose
/// (`dc_txt_domain_name`), so only this shape tells.
pub fn is_telegram_config(msg: &[u8], answers: &[Record]) -> bool {
    let mut texts: smallvec::SmallVec<[smallvec::SmallVec<[u8; 256]>; 4]> =
        smallvec::SmallVec::new();
    for record in answers.iter().filter(|r| r.rtype == TYPE_TXT) {
        let mut text = smallvec::SmallVec::new();
        let mut at = record.rdata_at;
        while at < record.end {
            let len = usize::from(msg[at]);
            let Some(string) = msg
                .get(at + 1..at + 1 + len)
                .filter(|_| at + 1 + len <= record.end)
            else {
                return false;
            };
            text.extend(
                string
                    .iter()
                    .copied()
                    .filter(|&b| is_base64(b) || b == b'='),
            );
            if text.len() > TELEGRAM_CONFIG_CHARS {
                return false;
            }
            at += 1 + len;
        }
        texts.push(text);
    }
    if texts.is_empty() || texts.iter().map(|t| t.len()).sum::<usize>() != TELEGRAM_CONFIG_CHARS {
        return false;
    }
    texts.sort_by_key(|t| std::cmp::Reverse(t.len()));
    let joined: smallvec::SmallVec<[u8; TELEGRAM_CONFIG_CHARS]> =
        texts.iter().flatten().copied().collect();
    // 256 bytes: 85 whole groups, then one byte and "==" (whose last character has only zero
    // bits below the byte's two).
    let (body, tail) = joined.split_at(TELEGRAM_CONFIG_CHARS - 2);
    tail == b"=="
        && body.iter().all(|&b| is_base64(b))
        && matches!(body[body.len() - 1], b'A' | b'Q' | b'g' | b'w')
}

fn is_base64(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'+' || b == b'/'
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::name::from_text;

    #[test]
    fn built_in_names_and_the_names_below_them() {
        let cases = [
            ("use-application-dns.net", Some(BypassKind::Canary)),
            ("USE-application-dns.net.", Some(BypassKind::Canary)),
            ("mask.icloud.com", Some(BypassKind::PrivateRelay)),
            ("mask-h2.icloud.com", Some(BypassKind::PrivateRelay)),
            ("x.mask-canary.icloud.com", Some(BypassKind::PrivateRelay)),
            ("_dns.resolver.arpa", Some(BypassKind::Ddr)),
            ("_dns.foo.resolver.arpa", None),
            ("icloud.com", None),
            ("notmask.icloud.com", None),
            ("xuse-application-dns.net", None),
            ("application-dns.net", None),
        ];
        for (text, want) in cases {
            let wire = from_text(text).unwrap();
            assert_eq!(built_in(&wire).map(|(kind, _)| kind), want, "{text}");
        }
    }

    /// A response to `name` TXT with one record per string of `texts`.
    fn txt_answer(texts: &[&[u8]]) -> (Vec<u8>, Vec<Record>) {
        let mut msg = vec![0, 1, 0x81, 0x80, 0, 0, 0, texts.len() as u8, 0, 0, 0, 0];
        let mut records = Vec::new();
        for text in texts {
            let start = msg.len();
            msg.extend_from_slice(&[0, 0, 16, 0, 1, 0, 0, 1, 0]);
            let strings: Vec<&[u8]> = text.chunks(255).collect();
            let rdlen: usize = strings.iter().map(|s| s.len() + 1).sum();
            msg.extend_from_slice(&(rdlen as u16).to_be_bytes());
            for string in strings {
                msg.push(string.len() as u8);
                msg.extend_from_slice(string);
            }
            records.push(Record::read(&msg, start).unwrap());
        }
        (msg, records)
    }

    #[test]
    fn telegrams_fallback_configuration_is_known_by_its_shape() {
        use base64::Engine;
        let blob: Vec<u8> = (0..256u32).map(|i| (i * 167 + 13) as u8).collect();
        let text = base64::engine::general_purpose::STANDARD.encode(&blob);
        assert_eq!(text.len(), TELEGRAM_CONFIG_CHARS);
        let text = text.as_bytes();
        let is = |texts: &[&[u8]]| {
            let (msg, records) = txt_answer(texts);
            is_telegram_config(&msg, &records)
        };
        // As published: two records, 250 and 94 characters, in either order; or one.
        assert!(is(&[&text[..250], &text[250..]]));
        assert!(is(&[&text[250..], &text[..250]]));
        assert!(is(&[text]));
        // Quotes and spaces are not base64: clients drop them.
        let quoted = [b"\"".as_slice(), &text[..100], b" ", &text[100..], b"\""].concat();
        assert!(is(&[&quoted]));
        // Not it: joined in the wrong order, a character short or over, not base64 of 256
        // bytes, an ordinary TXT.
        assert!(
            !is(&[&text[..94], &text[94..]]),
            "shortest first is not how clients join"
        );
        assert!(!is(&[&text[1..]]));
        assert!(!is(&[&[text, b"A".as_slice()].concat()]));
        let mut one_more_byte = text.to_vec();
        one_more_byte[341] = b'B';
        assert!(!is(&[&one_more_byte]), "bits below the last byte");
        assert!(!is(&[b"v=spf1 include:_spf.example.com ~all"]));
        assert!(!is(&[]));
    }
}
