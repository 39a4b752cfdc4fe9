//! DDR (RFC 9462): the SVCB records that advertise portvakt's own DoT, DoH and DoQ endpoints
//! (RFC 9461: alpn, port, dohpath, address hints), answered to `_dns.resolver.arpa` and to
//! `_dns.<tls_name>` in segments with `advertise_encrypted`. Built once per policy.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use hickory_proto::rr::Name;
use hickory_proto::rr::rdata::svcb::{Alpn, IpHint, SVCB, SvcParamKey, SvcParamValue, Unknown};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::serialize::binary::{BinEncodable, BinEncoder};

use crate::config::EncryptedSettings;
use crate::name;
use crate::protocol::Transport;

/// `_dns.resolver.arpa`, the name DDR clients ask.
const RESOLVER_ARPA: &[u8] = b"\x04_dns\x08resolver\x04arpa\x00";
/// SvcParamKey of `dohpath` (RFC 9461).
const DOHPATH: u16 = 7;
/// The TTL of the advertisement.
pub const TTL: u32 = 300;

/// The advertisement: SVCB RDATA, one per endpoint (DoT first).
#[derive(Debug, Clone)]
pub struct Advertisement {
    pub records: Vec<Vec<u8>>,
    /// `_dns.<tls_name>` in lowercase wire form.
    own: Vec<u8>,
}

impl Advertisement {
    /// The records for `settings`, when it has a name and an encrypted listener.
    pub fn new(settings: &EncryptedSettings) -> Option<Advertisement> {
        let text = settings.name.as_deref()?;
        let target = Name::from_ascii(format!("{}.", text.trim_end_matches('.'))).ok()?;
        let mut records = Vec::new();
        let mut priority = 1;
        for transport in Transport::encrypted() {
            let addrs: Vec<SocketAddr> = settings.listen_of(transport).collect();
            let alpn = transport.alpn().expect("an encrypted transport");
            let path = transport.has_path().then_some(&settings.https_path);
            let ports: BTreeSet<u16> = addrs.iter().map(SocketAddr::port).collect();
            for port in ports {
                let mut params = vec![
                    (
                        SvcParamKey::Alpn,
                        SvcParamValue::Alpn(Alpn(vec![alpn.to_owned()])),
                    ),
                    (SvcParamKey::Port, SvcParamValue::Port(port)),
                ];
                let (v4, v6) = hints(addrs.iter().filter(|a| a.port() == port));
                if !v4.is_empty() {
                    params.push((SvcParamKey::Ipv4Hint, SvcParamValue::Ipv4Hint(IpHint(v4))));
                }
                if !v6.is_empty() {
                    params.push((SvcParamKey::Ipv6Hint, SvcParamValue::Ipv6Hint(IpHint(v6))));
                }
                if let Some(path) = path {
                    let template = format!("{path}{{?dns}}").into_bytes();
                    params.push((
                        SvcParamKey::Unknown(DOHPATH),
                        SvcParamValue::Unknown(Unknown(template)),
                    ));
                }
                // SvcParams go in key order (RFC 9460 section 2.2).
                params.sort_by_key(|(key, _)| u16::from(*key));
                let svcb = SVCB::new(priority, target.clone(), params);
                let mut rdata = Vec::new();
                let mut encoder = BinEncoder::new(&mut rdata);
                svcb.emit(&mut encoder).ok()?;
                records.push(rdata);
                priority += 1;
            }
        }
        let own = name::from_text(&format!("_dns.{text}")).ok()?;
        (!records.is_empty()).then_some(Advertisement { records, own })
    }

    /// Whether `name` (lowercase wire form) is one the advertisement answers.
    pub fn answers(&self, name: &[u8]) -> bool {
        name == RESOLVER_ARPA || name == self.own.as_slice()
    }
}

/// The specific addresses among `addrs` (not `0.0.0.0` or `[::]`), as address hints.
fn hints<'a>(addrs: impl Iterator<Item = &'a SocketAddr>) -> (Vec<A>, Vec<AAAA>) {
    let (mut v4, mut v6) = (Vec::new(), Vec::new());
    for addr in addrs.filter(|a| !a.ip().is_unspecified()) {
        match addr.ip() {
            IpAddr::V4(ip) => v4.push(A(ip)),
            IpAddr::V6(ip) => v6.push(AAAA(ip)),
        }
    }
    (v4, v6)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_doh_doq_and_doh3_records_carry_alpn_port_hints_and_path() {
        let settings = EncryptedSettings {
            listen: vec![
                (Transport::Tls, "192.0.2.53:853".parse().unwrap()),
                (Transport::Https, "192.0.2.53:443".parse().unwrap()),
                (Transport::Https, "[::]:443".parse().unwrap()),
                (Transport::Quic, "192.0.2.53:853".parse().unwrap()),
                (Transport::H3, "192.0.2.53:443".parse().unwrap()),
            ],
            https_path: "/dns-query".to_owned(),
            name: Some("dns.kommune.test".to_owned()),
            ..EncryptedSettings::default()
        };
        let ad = Advertisement::new(&settings).expect("an advertisement");
        assert_eq!(ad.records.len(), 4);
        let (dot, doh, doq, doh3) = (
            &ad.records[0],
            &ad.records[1],
            &ad.records[2],
            &ad.records[3],
        );
        assert_eq!(&dot[..2], &[0, 1], "priority 1");
        let target = b"\x03dns\x07kommune\x04test\x00";
        assert_eq!(&dot[2..2 + target.len()], target, "an uncompressed target");
        let has = |rdata: &[u8], needle: &[u8]| rdata.windows(needle.len()).any(|w| w == needle);
        assert!(has(dot, b"\x00\x01\x00\x04\x03dot"), "alpn=dot");
        assert!(has(dot, &[0, 3, 0, 2, 3, 0x55]), "port=853");
        assert!(has(dot, &[0, 4, 0, 4, 192, 0, 2, 53]), "ipv4hint");
        assert!(has(doh, b"\x00\x07\x00\x10/dns-query{?dns}"), "dohpath");
        assert_eq!(&doq[..2], &[0, 3], "priority 3");
        assert!(has(doq, b"\x00\x01\x00\x04\x03doq"), "alpn=doq");
        assert!(has(doq, &[0, 3, 0, 2, 3, 0x55]), "port=853");
        assert!(!has(doq, b"/dns-query"), "no dohpath");
        assert_eq!(&doh3[..2], &[0, 4], "priority 4");
        assert!(has(doh3, b"\x00\x01\x00\x03\x02h3"), "alpn=h3");
        assert!(has(doh3, &[0, 3, 0, 2, 1, 0xbb]), "port=443");
        assert!(has(doh3, b"\x00\x07\x00\x10/dns-query{?dns}"), "dohpath");
        assert!(
            !has(doh, &[0, 6, 0, 16]),
            "no ipv6hint from the unspecified address"
        );
        assert!(ad.answers(b"\x04_dns\x08resolver\x04arpa\x00"));
        assert!(ad.answers(b"\x04_dns\x03dns\x07kommune\x04test\x00"));
        assert!(!ad.answers(b"\x03dns\x07kommune\x04test\x00"));
        let unnamed = EncryptedSettings {
            name: None,
            ..settings
        };
        assert!(Advertisement::new(&unnamed).is_none());
    }
}
