//! Host names of list URLs and of upstream servers given by name, resolved through
//! portvakt's own upstream groups (conditional zones included), not the host's resolver: on
//! the resolver host, resolv.conf may point at portvakt itself, which is not answering yet
//! while it downloads its lists at start.

use std::io;
use std::net::IpAddr;
use std::time::Instant;

use crate::name;
use crate::wire::{self, Query, Sections, TYPE_A, TYPE_AAAA};

use super::{Upstreams, exchange};

impl Upstreams {
    /// The addresses of `host` (A and AAAA, asked at once).
    pub async fn resolve(&self, host: &str) -> io::Result<Vec<IpAddr>> {
        let invalid = |_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("`{host}` is not a host name"),
            )
        };
        let name = name::from_text(host).map_err(invalid)?;
        let (v4, v6) = tokio::join!(
            self.addresses(&name, TYPE_A),
            self.addresses(&name, TYPE_AAAA)
        );
        let mut found: Vec<IpAddr> = v4.unwrap_or_default();
        found.extend(v6.unwrap_or_default());
        if found.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no address for {host}"),
            ));
        }
        Ok(found)
    }

    async fn addresses(&self, name: &[u8], qtype: u16) -> io::Result<Vec<IpAddr>> {
        let mut packet = vec![0, 0, 0x01, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        packet.extend_from_slice(name);
        packet.extend_from_slice(&qtype.to_be_bytes());
        packet.extend_from_slice(&1u16.to_be_bytes());
        let query = Query::parse(&packet).map_err(|_| io::ErrorKind::InvalidInput)?;
        let group = &self.groups[self.group_for(query.name())];
        let resume = exchange::Resume::new(Instant::now());
        let answer = exchange::run(group, &query, resume)
            .await
            .map_err(|err| io::Error::other(crate::error::chain(&err)))?;
        let sections = Sections::read(&answer).ok_or(io::ErrorKind::InvalidData)?;
        let mut found = Vec::new();
        for record in sections.answers.iter().filter(|r| r.rtype == qtype) {
            wire::record_addresses(&answer, record, &mut found);
        }
        Ok(found)
    }
}
