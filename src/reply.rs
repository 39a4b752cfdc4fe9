//! Answers portvakt writes itself (blocked, refused, SERVFAIL, truncated), straight into a
//! reused buffer. Every reply echoes the client's ID, RD and CD bits and its question bytes
//! (so 0x20 case survives), sets RA, and carries an OPT record only when the query had one
//! (RFC 6891 §7). What a blocked answer holds is prepared per policy (`policy/block.rs`);
//! forwarded answers are `cache.rs`'s.

use crate::bypass::BypassKind;
use crate::config::BlockResponse;
use crate::ddr::Advertisement;
use crate::policy::{BlockAnswers, ListId, bypass_is_nodata};
use crate::wire::{
    self, CLASS_IN, EdeCode, HEADER_LEN, Query, Rcode, TYPE_SOA, TYPE_SVCB, push_opt,
};

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
    let addresses = answers.addresses(query.qtype, query.qclass);
    let rcode = match answers.response() {
        BlockResponse::Nxdomain => Rcode::NxDomain,
        BlockResponse::Refused => return error(query, Rcode::Refused, ede, out),
        _ => Rcode::NoError,
    };
    if addresses.is_empty() {
        return negative(query, answers, rcode, zone_at, ede, out);
    }
    begin(query, rcode, out);
    for address in addresses {
        push_pointer(out, HEADER_LEN);
        push_record_fixed(out, query.qtype, answers.ttl(), address.len());
        out.extend_from_slice(address);
    }
    wire::set_u16(out, 6, addresses.len() as u16);
    push_opt(query, 0, ede, out);
}

/// The answer to a built-in bypass name (at `zone_at` in the question name), whatever
/// `[block] response` says: the clients act only on a negative answer (Firefox turns its DoH
/// back on for an address). NXDOMAIN for the canary and Private Relay, NODATA for DDR's
/// `_dns.resolver.arpa` itself (it exists; names below it do not), with EDE 15 and the SOA of
/// that name.
pub fn bypass(
    query: &Query,
    answers: &BlockAnswers,
    kind: BypassKind,
    zone_at: usize,
    out: &mut Vec<u8>,
) {
    let (rcode, text) = match kind {
        BypassKind::Ddr => (
            if bypass_is_nodata(kind, zone_at) {
                Rcode::NoError
            } else {
                Rcode::NxDomain
            },
            "this network's resolver is the only one offered",
        ),
        BypassKind::PrivateRelay => (
            Rcode::NxDomain,
            "iCloud Private Relay is not available on this network",
        ),
        _ => (
            Rcode::NxDomain,
            "browser DNS over HTTPS is not used on this network",
        ),
    };
    let ede = Some((EdeCode::Blocked, text));
    negative(query, answers, rcode, zone_at, ede, out);
}

/// DDR's answer where portvakt advertises itself: its SVCB records for type SVCB, NODATA
/// (with the SOA) for any other type.
pub fn advertise(query: &Query, ad: &Advertisement, answers: &BlockAnswers, out: &mut Vec<u8>) {
    if query.qtype != TYPE_SVCB {
        negative(query, answers, Rcode::NoError, 0, None, out);
        return;
    }
    begin(query, Rcode::NoError, out);
    for rdata in &ad.records {
        push_pointer(out, HEADER_LEN);
        push_record_fixed(out, TYPE_SVCB, crate::ddr::TTL, rdata.len());
        out.extend_from_slice(rdata);
    }
    wire::set_u16(out, 6, ad.records.len() as u16);
    push_opt(query, 0, None, out);
}

/// NXDOMAIN or NODATA with the SOA of the zone at `zone_at` in the question name in
/// authority, which lets the client cache the negative answer.
#[inline(always)]
fn negative(
    query: &Query,
    answers: &BlockAnswers,
    rcode: Rcode,
    zone_at: usize,
    ede: Option<(EdeCode, &str)>,
    out: &mut Vec<u8>,
) {
    begin(query, rcode, out);
    push_pointer(out, HEADER_LEN + zone_at);
    let soa = answers.soa_rdata();
    push_record_fixed(out, TYPE_SOA, answers.ttl(), soa.len());
    out.extend_from_slice(soa);
    wire::set_u16(out, 8, 1);
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
