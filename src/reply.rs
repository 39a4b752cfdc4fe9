//! Answers portvakt writes itself (blocked, refused, SERVFAIL, truncated), straight into a
//! reused buffer. Every reply echoes the client's ID, RD and CD bits and its question bytes
//! (so 0x20 case survives), sets RA, and carries an OPT record only when the query had one
//! (RFC 6891 §7). Forwarded answers are `cache.rs`'s.

use std::net::IpAddr;

use crate::config::{BlockResponse, BlockSettings, ListConfig};
use crate::policy::ListId;
use crate::wire::{
    self, CLASS_IN, HEADER_LEN, Query, Rcode, TYPE_A, TYPE_AAAA, TYPE_OPT, TYPE_SOA,
};

/// UDP payload size portvakt advertises (the DNS Flag Day 2020 value).
pub const OUR_UDP_PAYLOAD: u16 = 1232;

/// Extended DNS Error info-codes used here (RFC 8914 §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum EdeCode {
    Blocked = 15,
    Prohibited = 18,
    NoReachableAuthority = 22,
    NetworkError = 23,
}

const EDE_OPTION: u16 = 15;
/// mname and rname of synthesized SOA records.
const SOA_MNAME: &[u8] = b"\x07blocked\x08portvakt\x07invalid\x00";
const SOA_RNAME: &[u8] = b"\x0Ahostmaster\x08portvakt\x07invalid\x00";

/// Everything a blocked answer needs, prepared once per policy.
#[derive(Debug, Clone)]
pub struct BlockAnswers {
    response: BlockResponse,
    ttl: u32,
    /// RDATA of the A / AAAA answers: the sinkhole addresses, `0.0.0.0` / `::` for zero-ip,
    /// none for the other responses (which then answer NODATA for these types too).
    v4: Vec<Box<[u8]>>,
    v6: Vec<Box<[u8]>>,
    soa_rdata: Vec<u8>,
    /// EDE extra-text per list id.
    messages: Vec<Box<str>>,
}

impl BlockAnswers {
    pub fn new(block: &BlockSettings, lists: &[ListConfig]) -> Self {
        let mut soa_rdata = Vec::with_capacity(64);
        soa_rdata.extend_from_slice(SOA_MNAME);
        soa_rdata.extend_from_slice(SOA_RNAME);
        // serial, refresh, retry, expire, minimum (the negative-caching TTL, RFC 2308 §5)
        for value in [1, 3600, 600, 86400, block.ttl] {
            soa_rdata.extend_from_slice(&value.to_be_bytes());
        }
        let addresses = match block.response {
            BlockResponse::ZeroIp => vec![IpAddr::from([0u8; 4]), IpAddr::from([0u8; 16])],
            BlockResponse::Sinkhole => block.sinkhole.clone(),
            _ => Vec::new(),
        };
        let rdata = |v4: bool| -> Vec<Box<[u8]>> {
            addresses
                .iter()
                .filter(|a| a.is_ipv4() == v4)
                .map(|a| match a {
                    IpAddr::V4(a) => a.octets().into(),
                    IpAddr::V6(a) => a.octets().into(),
                })
                .collect()
        };
        BlockAnswers {
            response: block.response,
            ttl: block.ttl,
            v4: rdata(true),
            v6: rdata(false),
            soa_rdata,
            messages: lists
                .iter()
                .map(|l| ede_text(l.message.as_deref().unwrap_or(&block.message)).into())
                .collect(),
        }
    }

    pub fn message(&self, list: ListId) -> &str {
        &self.messages[list.0 as usize]
    }
}

/// EDE extra-text is kept short enough for any UDP answer: at most `MAX_EDE_TEXT` bytes,
/// cut at a character boundary.
const MAX_EDE_TEXT: usize = 300;

fn ede_text(message: &str) -> &str {
    let mut end = message.len().min(MAX_EDE_TEXT);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    &message[..end]
}

/// The answer to a blocked name: the configured response, the SOA of the matched zone (at
/// `zone_at` in the question name) on negative answers, and EDE 15 with the list's message.
pub fn blocked(
    query: &Query,
    answers: &BlockAnswers,
    list: ListId,
    zone_at: usize,
    out: &mut Vec<u8>,
) {
    let ede = Some((EdeCode::Blocked, answers.message(list)));
    let addresses: &[Box<[u8]>] = match (query.qtype, query.qclass) {
        (TYPE_A, CLASS_IN) => &answers.v4,
        (TYPE_AAAA, CLASS_IN) => &answers.v6,
        _ => &[],
    };
    let rcode = match answers.response {
        BlockResponse::Nxdomain => Rcode::NxDomain,
        BlockResponse::Refused => return error(query, Rcode::Refused, ede, out),
        _ => Rcode::NoError,
    };
    begin(query, rcode, out);
    if addresses.is_empty() {
        // NXDOMAIN, or NODATA: the SOA in authority lets the client cache the negative answer.
        push_pointer(out, HEADER_LEN + zone_at);
        push_record_fixed(out, TYPE_SOA, answers.ttl, answers.soa_rdata.len());
        out.extend_from_slice(&answers.soa_rdata);
        wire::set_u16(out, 8, 1);
    } else {
        for address in addresses {
            push_pointer(out, HEADER_LEN);
            push_record_fixed(out, query.qtype, answers.ttl, address.len());
            out.extend_from_slice(address);
        }
        wire::set_u16(out, 6, addresses.len() as u16);
    }
    push_opt(query, 0, ede, out);
}

/// REFUSED for a client in no segment, with EDE 18 (Prohibited).
pub fn refused(query: &Query, out: &mut Vec<u8>) {
    error(
        query,
        Rcode::Refused,
        Some((EdeCode::Prohibited, "client is not in any segment")),
        out,
    );
}

/// An answer with no records: `rcode`, the question, and an EDE when the client has EDNS.
pub fn error(query: &Query, rcode: Rcode, ede: Option<(EdeCode, &str)>, out: &mut Vec<u8>) {
    begin(query, rcode, out);
    push_opt(query, 0, ede, out);
}

/// BADVERS for an EDNS version above 0 (RFC 6891 §6.1.3): extended RCODE 16.
pub fn bad_version(query: &Query, out: &mut Vec<u8>) {
    begin(query, Rcode::NoError, out);
    push_opt(query, 1, None, out);
}

/// Header, question and OPT only, with TC=1: the client retries over TCP (RFC 7766 §5).
/// Used instead of a partial answer when a reply exceeds the client's UDP size.
pub fn truncated(query: &Query, rcode: u8, out: &mut Vec<u8>) {
    begin(query, Rcode::NoError, out);
    out[2] |= 0x02;
    out[3] |= rcode & 0x0F;
    push_opt(query, 0, None, out);
}

/// Starts a reply: header with the client's ID, RD and CD, QR and RA set, then the question.
fn begin(query: &Query, rcode: Rcode, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&query.id().to_be_bytes());
    out.push(0x80 | query.recursion_desired() as u8);
    out.push(0x80 | if query.checking_disabled() { 0x10 } else { 0 } | rcode as u8);
    out.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
    out.extend_from_slice(query.question());
}

fn push_pointer(out: &mut Vec<u8>, offset: usize) {
    out.extend_from_slice(&(0xC000 | offset as u16).to_be_bytes());
}

/// Type, class IN, TTL and RDLENGTH of a record whose owner was just written.
fn push_record_fixed(out: &mut Vec<u8>, rtype: u16, ttl: u32, rdlen: usize) {
    out.extend_from_slice(&rtype.to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    out.extend_from_slice(&ttl.to_be_bytes());
    out.extend_from_slice(&(rdlen as u16).to_be_bytes());
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
    let arcount = wire::u16_at(out, 10) + 1;
    wire::set_u16(out, 10, arcount);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_ede_text_is_cut_at_a_character_boundary() {
        let message = "ø".repeat(200); // 400 bytes, 2 per character
        let cut = ede_text(&message);
        assert_eq!(cut.len(), MAX_EDE_TEXT);
        assert!(cut.chars().all(|c| c == 'ø'));
        let odd = format!("x{message}");
        assert_eq!(
            ede_text(&odd).len(),
            MAX_EDE_TEXT - 1,
            "never half a character"
        );
    }
}
