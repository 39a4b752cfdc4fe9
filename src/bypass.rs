//! The ways a client goes around the resolver, as portvakt names them (the `kind` label of
//! `portvakt_bypass_attempts_total`), and the built-in names that stop some of them:
//! Firefox's DoH canary, iCloud Private Relay and DDR discovery. Which segment handles which
//! is the policy's; the answers are `reply.rs`'s.

use serde::Deserialize;

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
}
