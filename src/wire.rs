//! DNS wire format in place: the header and question of a query read without copying the
//! packet, the sections of a message walked record by record, and the few header fields the
//! gateway writes, with the OPT record (EDNS and Extended DNS Errors) of every reply portvakt
//! writes. Whole-message encoding on the slow path is left to hickory-proto.

use crate::name::MAX_WIRE_LEN;

pub const HEADER_LEN: usize = 12;
/// RFC 6891 OPT pseudo-record type.
pub const TYPE_OPT: u16 = 41;
pub const TYPE_A: u16 = 1;
pub const TYPE_AAAA: u16 = 28;
pub const TYPE_CNAME: u16 = 5;
pub const TYPE_SOA: u16 = 6;
/// RFC 9460 service binding records.
pub const TYPE_SVCB: u16 = 64;
pub const TYPE_HTTPS: u16 = 65;
/// SvcParamKeys of the address hints (RFC 9460 §7.3) and of ECH (§7.2 ... "ech", key 5).
const SVC_IPV4HINT: u16 = 4;
pub const SVC_ECH: u16 = 5;
const SVC_IPV6HINT: u16 = 6;
pub const CLASS_IN: u16 = 1;

/// UDP payload size portvakt advertises (the DNS Flag Day 2020 value).
pub const OUR_UDP_PAYLOAD: u16 = 1232;

/// Extended DNS Error info-codes used here (RFC 8914 §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum EdeCode {
    StaleAnswer = 3,
    Blocked = 15,
    Prohibited = 18,
    NoReachableAuthority = 22,
    NetworkError = 23,
}

/// The EDNS option code of an Extended DNS Error (RFC 8914 §2).
const EDE_OPTION: u16 = 15;

/// Response codes the gateway writes itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Rcode {
    NoError = 0,
    FormErr = 1,
    ServFail = 2,
    NxDomain = 3,
    NotImp = 4,
    Refused = 5,
}

/// The EDNS parameters of a query (RFC 6891 §6.1.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edns {
    /// The requestor's UDP payload size, as sent (may be below 512).
    pub payload: u16,
    pub version: u8,
    /// RFC 3225 DNSSEC OK.
    pub dnssec_ok: bool,
}

/// What to do with a packet that is not a query we can answer normally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    /// Too short to carry a header, or a response: never answered (no reflection).
    Drop,
    /// Answer with this rcode, echoing the header only.
    Answer(Rcode),
}

/// Where a parsed query's parts lie in its packet: kept beside the packet, so that a query
/// waiting for its upstream answer is parsed once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parsed {
    question_end: usize,
    lower_len: usize,
    qtype: u16,
    qclass: u16,
    edns: Option<Edns>,
}

/// A parsed query that borrows the packet. The question name is also kept lowercased, for
/// the lookup core and the cache key; the client's own bytes are echoed in replies (0x20).
pub struct Query<'a> {
    packet: &'a [u8],
    question_end: usize,
    lower: [u8; MAX_WIRE_LEN],
    lower_len: usize,
    pub qtype: u16,
    pub qclass: u16,
    pub edns: Option<Edns>,
}

impl<'a> Query<'a> {
    /// Reads the header, the single question and the OPT record. A question name with a
    /// compression pointer is FORMERR: valid queries never use one.
    pub fn parse(packet: &'a [u8]) -> Result<Self, Malformed> {
        if packet.len() < HEADER_LEN || packet[2] & 0x80 != 0 {
            return Err(Malformed::Drop);
        }
        if opcode(packet) != 0 {
            return Err(Malformed::Answer(Rcode::NotImp));
        }
        if u16_at(packet, 4) != 1 {
            return Err(Malformed::Answer(Rcode::FormErr));
        }
        let formerr = Malformed::Answer(Rcode::FormErr);
        let mut at = HEADER_LEN;
        loop {
            let len = *packet.get(at).ok_or(formerr)? as usize;
            if len & 0xC0 != 0 {
                return Err(formerr);
            }
            at += 1 + len;
            if at - HEADER_LEN > MAX_WIRE_LEN || at > packet.len() {
                return Err(formerr);
            }
            if len == 0 {
                break;
            }
        }
        // Length bytes are at most 63, below b'A', so lowercasing the whole name leaves them be.
        let lower_len = at - HEADER_LEN;
        let mut lower = [0u8; MAX_WIRE_LEN];
        lower[..lower_len].copy_from_slice(&packet[HEADER_LEN..at]);
        lower[..lower_len].make_ascii_lowercase();
        if packet.len() < at + 4 {
            return Err(formerr);
        }
        let qtype = u16_at(packet, at);
        let qclass = u16_at(packet, at + 2);
        let question_end = at + 4;
        let edns = read_opt(packet, question_end).map_err(|()| formerr)?;
        Ok(Query {
            packet,
            question_end,
            lower,
            lower_len,
            qtype,
            qclass,
            edns,
        })
    }

    /// Where this query's parts lie in its packet, to rebuild it with [`Query::at`].
    pub fn parsed(&self) -> Parsed {
        Parsed {
            question_end: self.question_end,
            lower_len: self.lower_len,
            qtype: self.qtype,
            qclass: self.qclass,
            edns: self.edns,
        }
    }

    /// The query `parsed` was taken from, rebuilt on the same `packet` without reading the
    /// packet again: only the name is lowercased anew.
    pub fn at(packet: &'a [u8], parsed: Parsed) -> Query<'a> {
        let mut lower = [0u8; MAX_WIRE_LEN];
        lower[..parsed.lower_len]
            .copy_from_slice(&packet[HEADER_LEN..HEADER_LEN + parsed.lower_len]);
        lower[..parsed.lower_len].make_ascii_lowercase();
        Query {
            packet,
            question_end: parsed.question_end,
            lower,
            lower_len: parsed.lower_len,
            qtype: parsed.qtype,
            qclass: parsed.qclass,
            edns: parsed.edns,
        }
    }

    pub fn id(&self) -> u16 {
        u16_at(self.packet, 0)
    }

    /// The question name, lowercase wire format.
    pub fn name(&self) -> &[u8] {
        &self.lower[..self.lower_len]
    }

    /// The question section exactly as the client sent it.
    pub fn question(&self) -> &'a [u8] {
        &self.packet[HEADER_LEN..self.question_end]
    }

    pub fn recursion_desired(&self) -> bool {
        self.packet[2] & 0x01 != 0
    }

    pub fn checking_disabled(&self) -> bool {
        self.packet[3] & 0x10 != 0
    }

    pub fn dnssec_ok(&self) -> bool {
        self.edns.is_some_and(|e| e.dnssec_ok)
    }

    /// The largest UDP answer this client accepts: 512 without EDNS (RFC 1035 §4.2.1),
    /// else its payload size, never below 512 (RFC 6891 §6.2.5) and at most 4096.
    pub fn udp_limit(&self) -> usize {
        self.edns
            .map_or(512, |e| (e.payload as usize).clamp(512, 4096))
    }
}

/// Writes a header-only answer to a packet that has at least a header: ID, opcode and RD
/// echoed, no question. Used for FORMERR and NOTIMP, where the question cannot be trusted.
/// A query (RD set, no EDNS) for `name` (wire format) and `qtype`: for portvakt's own
/// lookups (`explain`), never sent for a client.
pub fn question(name: &[u8], qtype: u16) -> Vec<u8> {
    let mut packet = Vec::with_capacity(HEADER_LEN + name.len() + 4);
    packet.extend_from_slice(&[0, 0, 0x01, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    packet.extend_from_slice(name);
    packet.extend_from_slice(&qtype.to_be_bytes());
    packet.extend_from_slice(&1u16.to_be_bytes());
    packet
}

pub fn write_header_only(packet: &[u8], rcode: Rcode, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&packet[..2]);
    out.push(0x80 | (packet[2] & 0x79)); // QR, opcode, RD
    out.push(0x80 | rcode as u8); // RA
    out.extend_from_slice(&[0; 8]);
}

fn opcode(packet: &[u8]) -> u8 {
    (packet[2] >> 3) & 0x0F
}

pub fn u16_at(buf: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([buf[at], buf[at + 1]])
}

pub fn u32_at(buf: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])
}

pub fn set_u16(buf: &mut [u8], at: usize, value: u16) {
    buf[at..at + 2].copy_from_slice(&value.to_be_bytes());
}

/// Appends our OPT record when the query had one: our payload size, the extended RCODE bits,
/// version 0, DO mirrored (RFC 3225 §3), and an EDE option if given. Bumps ARCOUNT.
pub fn push_opt(query: &Query, ext_rcode: u8, ede: Option<(EdeCode, &str)>, out: &mut Vec<u8>) {
    let Some(edns) = query.edns else { return };
    out.push(0);
    out.extend_from_slice(&TYPE_OPT.to_be_bytes());
    out.extend_from_slice(&OUR_UDP_PAYLOAD.to_be_bytes());
    out.extend_from_slice(&[ext_rcode, 0, if edns.dnssec_ok { 0x80 } else { 0 }, 0]);
    match ede {
        Some((code, text)) => {
            let text = text.as_bytes();
            out.extend_from_slice(&(4 + 2 + text.len() as u16).to_be_bytes());
            out.extend_from_slice(&EDE_OPTION.to_be_bytes());
            out.extend_from_slice(&(2 + text.len() as u16).to_be_bytes());
            out.extend_from_slice(&(code as u16).to_be_bytes());
            out.extend_from_slice(text);
        }
        None => out.extend_from_slice(&[0, 0]),
    }
    let arcount = u16_at(out, 10) + 1;
    set_u16(out, 10, arcount);
}

/// Finds the OPT record among the records after the question. `Err` when a record runs
/// past the packet or there is more than one OPT (RFC 6891 §6.1.1: FORMERR).
fn read_opt(packet: &[u8], mut at: usize) -> Result<Option<Edns>, ()> {
    let records =
        u16_at(packet, 6) as usize + u16_at(packet, 8) as usize + u16_at(packet, 10) as usize;
    let mut edns = None;
    for _ in 0..records {
        let record = Record::read(packet, at).ok_or(())?;
        if record.rtype == TYPE_OPT {
            if edns.is_some() {
                return Err(());
            }
            let ttl = u32_at(packet, record.ttl_at);
            edns = Some(Edns {
                payload: record.class,
                version: (ttl >> 16) as u8,
                dnssec_ok: ttl & 0x8000 != 0,
            });
        }
        at = record.end;
    }
    Ok(edns)
}

/// One resource record's position in a message.
#[derive(Debug, Clone, Copy)]
pub struct Record {
    pub start: usize,
    pub rtype: u16,
    pub class: u16,
    pub ttl_at: usize,
    pub rdata_at: usize,
    pub end: usize,
}

impl Record {
    /// Reads the record at `at`; `None` if it does not fit in `msg`.
    pub fn read(msg: &[u8], at: usize) -> Option<Record> {
        let fixed = skip_name(msg, at)?;
        if msg.len() < fixed + 10 {
            return None;
        }
        let rdlen = u16_at(msg, fixed + 8) as usize;
        let end = fixed + 10 + rdlen;
        (end <= msg.len()).then_some(Record {
            start: at,
            rtype: u16_at(msg, fixed),
            class: u16_at(msg, fixed + 2),
            ttl_at: fixed + 4,
            rdata_at: fixed + 10,
            end,
        })
    }
}

/// The addresses `record` of `msg` carries: an A or AAAA record's, or the `ipv4hint` and
/// `ipv6hint` of an SVCB or HTTPS record (whose target name is never compressed, RFC 9460
/// §2.2). Appended to `out`; a malformed record adds nothing more.
pub fn record_addresses(msg: &[u8], record: &Record, out: &mut impl Extend<std::net::IpAddr>) {
    let rdata = &msg[record.rdata_at..record.end];
    if record.class != CLASS_IN {
        return;
    }
    match record.rtype {
        TYPE_A if rdata.len() == 4 => out
            .extend([
                std::net::Ipv4Addr::from(<[u8; 4]>::try_from(rdata).expect("4 bytes")).into(),
            ]),
        TYPE_AAAA if rdata.len() == 16 => out
            .extend([
                std::net::Ipv6Addr::from(<[u8; 16]>::try_from(rdata).expect("16 bytes")).into(),
            ]),
        TYPE_SVCB | TYPE_HTTPS => {
            for (key, value) in svc_params(rdata) {
                match key {
                    SVC_IPV4HINT => {
                        out.extend(value.chunks_exact(4).map(|a| {
                            std::net::IpAddr::from(<[u8; 4]>::try_from(a).expect("4 bytes"))
                        }))
                    }
                    SVC_IPV6HINT => out.extend(value.chunks_exact(16).map(|a| {
                        std::net::IpAddr::from(<[u8; 16]>::try_from(a).expect("16 bytes"))
                    })),
                    _ => {}
                }
            }
        }
        _ => {}
    }
}

/// The smallest TTL of the answer and authority records of a reply (its freshness for an HTTP
/// cache, RFC 8484 section 5.1); `None` when it has none or is malformed.
pub fn min_ttl(msg: &[u8]) -> Option<u32> {
    if msg.len() < 12 {
        return None;
    }
    let mut at = 12;
    for _ in 0..u16_at(msg, 4) {
        at = skip_name(msg, at)? + 4;
    }
    let records = u16_at(msg, 6) + u16_at(msg, 8);
    let mut least: Option<u32> = None;
    for _ in 0..records {
        let record = Record::read(msg, at)?;
        let ttl = u32_at(msg, record.ttl_at);
        least = Some(least.map_or(ttl, |l| l.min(ttl)));
        at = record.end;
    }
    least
}

/// Whether `record` is an SVCB or HTTPS record with the SvcParam `key`.
pub fn has_svc_param(msg: &[u8], record: &Record, key: u16) -> bool {
    matches!(record.rtype, TYPE_SVCB | TYPE_HTTPS)
        && svc_params(&msg[record.rdata_at..record.end]).any(|(k, _)| k == key)
}

/// The (key, value) SvcParams of SVCB/HTTPS RDATA, until the first malformed one.
fn svc_params(rdata: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut at = skip_name(rdata, 2).filter(|_| rdata.len() > 2);
    std::iter::from_fn(move || {
        let start = at?;
        let header = rdata.get(start..start + 4)?;
        let (key, len) = (u16_at(header, 0), u16_at(header, 2) as usize);
        let value = rdata.get(start + 4..start + 4 + len);
        at = value.map(|_| start + 4 + len);
        Some((key, value?))
    })
}

/// Skips a possibly compressed name; returns the offset after it.
pub fn skip_name(msg: &[u8], mut at: usize) -> Option<usize> {
    loop {
        let len = *msg.get(at)? as usize;
        match len & 0xC0 {
            0x00 if len == 0 => return Some(at + 1),
            0x00 => at += 1 + len,
            0xC0 => return (at + 2 <= msg.len()).then_some(at + 2),
            _ => return None,
        }
    }
}

/// Reads a possibly compressed name into lowercase wire format. Pointers must point
/// backwards, which bounds the walk.
pub fn read_name(msg: &[u8], mut at: usize) -> Option<Vec<u8>> {
    let mut name = Vec::with_capacity(32);
    let mut limit = at;
    loop {
        let len = *msg.get(at)? as usize;
        match len & 0xC0 {
            0x00 => {
                name.push(len as u8);
                if len == 0 {
                    return Some(name);
                }
                let label = msg.get(at + 1..at + 1 + len)?;
                name.extend(label.iter().map(u8::to_ascii_lowercase));
                if name.len() > MAX_WIRE_LEN {
                    return None;
                }
                at += 1 + len;
            }
            0xC0 => {
                let target = ((len & 0x3F) << 8) | *msg.get(at + 1)? as usize;
                if target >= limit {
                    return None;
                }
                limit = target;
                at = target;
            }
            _ => return None,
        }
    }
}

/// Records of one section; a usual answer's fit without a heap allocation.
pub type SectionRecords = smallvec::SmallVec<[Record; 8]>;

/// The positions of every record in a message, section by section.
pub struct Sections {
    pub answers: SectionRecords,
    pub authorities: SectionRecords,
    pub additionals: SectionRecords,
}

impl Sections {
    /// Walks a whole message; `None` if it is cut short or has more than one question.
    pub fn read(msg: &[u8]) -> Option<Sections> {
        if msg.len() < HEADER_LEN || u16_at(msg, 4) > 1 {
            return None;
        }
        let mut at = HEADER_LEN;
        if u16_at(msg, 4) == 1 {
            at = skip_name(msg, at)? + 4;
        }
        let mut read = |count: u16| -> Option<SectionRecords> {
            let mut records = SectionRecords::new();
            for _ in 0..count {
                let record = Record::read(msg, at)?;
                at = record.end;
                records.push(record);
            }
            Some(records)
        };
        Some(Sections {
            answers: read(u16_at(msg, 6))?,
            authorities: read(u16_at(msg, 8))?,
            additionals: read(u16_at(msg, 10))?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_ttl_is_the_least_of_answer_and_authority() {
        let mut msg = vec![0, 1, 0x81, 0x80, 0, 1, 0, 2, 0, 1, 0, 0];
        msg.extend_from_slice(b"\x01a\x00\x00\x01\x00\x01");
        for ttl in [300u32, 60, 900] {
            msg.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
            msg.extend_from_slice(&ttl.to_be_bytes());
            msg.extend_from_slice(&[0, 4, 192, 0, 2, 1]);
        }
        assert_eq!(min_ttl(&msg), Some(60));
        assert_eq!(min_ttl(&msg[..msg.len() - 3]), None, "a record cut short");
        assert_eq!(
            min_ttl(&msg[..12 + 7]),
            None,
            "counts promise records that are absent"
        );
        let mut empty = msg[..12 + 7].to_vec();
        empty[7] = 0;
        empty[9] = 0;
        assert_eq!(min_ttl(&empty), None);
    }

    #[test]
    fn a_query_rebuilt_from_its_parse_is_the_same() {
        for (name, edns) in [("WwW.TikTok.COM", Some((1232, true))), ("a.example", None)] {
            let packet = query(name, edns);
            let parsed = Query::parse(&packet).unwrap();
            let again = Query::at(&packet, parsed.parsed());
            assert_eq!(again.name(), parsed.name());
            assert_eq!(again.question(), parsed.question());
            assert_eq!((again.qtype, again.qclass), (parsed.qtype, parsed.qclass));
            assert_eq!(again.edns, parsed.edns);
            assert_eq!(again.udp_limit(), parsed.udp_limit());
            assert_eq!(again.parsed(), parsed.parsed());
        }
        let packet = query("WwW.TikTok.COM", None);
        assert_eq!(
            Query::at(&packet, Query::parse(&packet).unwrap().parsed()).name(),
            b"\x03www\x06tiktok\x03com\x00"
        );
    }

    /// A query for `name` with type A; `edns` adds an OPT record (payload, DO).
    pub fn query(name: &str, edns: Option<(u16, bool)>) -> Vec<u8> {
        let mut q = vec![
            0xAB,
            0xCD,
            0x01,
            0x00,
            0,
            1,
            0,
            0,
            0,
            0,
            0,
            edns.is_some() as u8,
        ];
        for label in name.split('.').filter(|l| !l.is_empty()) {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.extend_from_slice(&[0, 0, 1, 0, 1]);
        if let Some((payload, dnssec_ok)) = edns {
            q.push(0);
            q.extend_from_slice(&TYPE_OPT.to_be_bytes());
            q.extend_from_slice(&payload.to_be_bytes());
            q.extend_from_slice(&[0, 0, if dnssec_ok { 0x80 } else { 0 }, 0, 0, 0]);
        }
        q
    }

    #[test]
    fn query_keeps_client_case_and_lowercases_the_lookup_name() {
        let packet = query("WwW.TikTok.COM", Some((1232, true)));
        let q = Query::parse(&packet).unwrap();
        assert_eq!(q.id(), 0xABCD);
        assert_eq!(q.name(), b"\x03www\x06tiktok\x03com\x00");
        assert_eq!(&q.question()[1..4], b"WwW");
        assert_eq!((q.qtype, q.qclass), (TYPE_A, CLASS_IN));
        assert_eq!(
            q.edns,
            Some(Edns {
                payload: 1232,
                version: 0,
                dnssec_ok: true
            })
        );
        assert_eq!(q.udp_limit(), 1232);
        assert!(q.recursion_desired());
    }

    #[test]
    fn malformed_packets_are_dropped_or_answered() {
        let good = query("a.example", None);
        let cases: Vec<(&str, Vec<u8>, Malformed)> = vec![
            ("short", good[..11].to_vec(), Malformed::Drop),
            (
                "response",
                {
                    let mut p = good.clone();
                    p[2] |= 0x80;
                    p
                },
                Malformed::Drop,
            ),
            (
                "opcode",
                {
                    let mut p = good.clone();
                    p[2] |= 2 << 3;
                    p
                },
                Malformed::Answer(Rcode::NotImp),
            ),
            (
                "two questions",
                {
                    let mut p = good.clone();
                    p[5] = 2;
                    p
                },
                Malformed::Answer(Rcode::FormErr),
            ),
            (
                "cut question",
                good[..good.len() - 2].to_vec(),
                Malformed::Answer(Rcode::FormErr),
            ),
            (
                "pointer in qname",
                {
                    let mut p = good.clone();
                    p[12] = 0xC0;
                    p
                },
                Malformed::Answer(Rcode::FormErr),
            ),
            (
                "arcount past end",
                {
                    let mut p = good.clone();
                    p[11] = 1;
                    p
                },
                Malformed::Answer(Rcode::FormErr),
            ),
        ];
        for (what, packet, want) in cases {
            assert_eq!(Query::parse(&packet).err(), Some(want), "{what}");
        }
    }

    #[test]
    fn compressed_names_are_read_and_loops_rejected() {
        let mut msg = query("a.example", None);
        let at = msg.len();
        msg.extend_from_slice(&[1, b'B', 0xC0, 14]); // B + pointer to "example"
        assert_eq!(read_name(&msg, at).unwrap(), b"\x01b\x07example\x00");
        let looped = [0u8, 0, 0xC0, 2];
        assert_eq!(read_name(&looped, 2), None);
    }
}
