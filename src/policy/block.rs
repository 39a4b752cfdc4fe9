//! The block answers of one policy, prepared once when it is compiled: the configured
//! response, its TTL, the sinkhole addresses as RDATA, the SOA RDATA of negative answers and
//! each list's EDE text. Writing them into a reply is `reply.rs`'s.

use std::net::IpAddr;

use crate::config::{BlockResponse, BlockSettings, ListConfig};
use crate::policy::ListId;
use crate::wire::{CLASS_IN, TYPE_A, TYPE_AAAA};

/// mname and rname of synthesized SOA records.
const SOA_MNAME: &[u8] = b"\x07blocked\x08portvakt\x07invalid\x00";
const SOA_RNAME: &[u8] = b"\x0Ahostmaster\x08portvakt\x07invalid\x00";

/// EDE extra-text is kept short enough for any UDP answer: at most `MAX_EDE_TEXT` bytes,
/// cut at a character boundary.
const MAX_EDE_TEXT: usize = 300;

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
    /// The configured response's name (`nxdomain`, `sinkhole`, ...).
    pub fn response_name(&self) -> &'static str {
        self.response.as_str()
    }

    pub(crate) fn new(block: &BlockSettings, lists: &[ListConfig]) -> Self {
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

    pub(crate) fn response(&self) -> BlockResponse {
        self.response
    }

    /// TTL of the answer records and of the SOA.
    pub(crate) fn ttl(&self) -> u32 {
        self.ttl
    }

    /// RDATA of the address records answered for this type and class (none: a negative answer).
    pub(crate) fn addresses(&self, qtype: u16, qclass: u16) -> &[Box<[u8]>] {
        match (qtype, qclass) {
            (TYPE_A, CLASS_IN) => &self.v4,
            (TYPE_AAAA, CLASS_IN) => &self.v6,
            _ => &[],
        }
    }

    pub(crate) fn soa_rdata(&self) -> &[u8] {
        &self.soa_rdata
    }

    /// The EDE extra-text for names `list` blocks.
    pub(crate) fn message(&self, list: ListId) -> &str {
        &self.messages[list.index()]
    }
}

fn ede_text(message: &str) -> &str {
    let mut end = message.len().min(MAX_EDE_TEXT);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    &message[..end]
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
