//! Upstream groups over hickory-resolver's `NameServerPool`: conditional zones first (the
//! longest matching zone wins), then the default group. The pool gives server selection,
//! coalescing of identical in-flight queries and TC→TCP fallback, and hands back the raw
//! upstream message for every answer with records, so CNAME chains ending in NXDOMAIN or
//! NODATA survive. Negative answers without records come back as `NoRecords` and are
//! rebuilt from their SOA and authority section. Each forward is bounded by the group's
//! timeout. Deciding and caching are the handler's.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use hickory_resolver::config::{NameServerConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::xfer::{DnsHandle, FirstAnswer};
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::{
    DnsRequest, DnsRequestOptions, Edns, Message, OpCode, ResponseCode,
};
use hickory_resolver::proto::rr::{DNSClass, Name, RecordType};
use hickory_resolver::{NameServerPool, PoolContext, TlsConfig};
use rustc_hash::FxBuildHasher;
use tracing::{info, warn};

use crate::config::UpstreamConfig;
use crate::metrics::{Metrics, UpstreamMetrics, UpstreamResult};
use crate::name;
use crate::wire::OUR_UDP_PAYLOAD;
use crate::wire::Query;

/// Why a forward produced no upstream answer to relay.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream group {group} did not answer within {timeout:?}")]
    Timeout { group: String, timeout: Duration },
    #[error("upstream group {group} failed")]
    Failed {
        group: String,
        #[source]
        source: NetError,
    },
    /// The upstream answered with an error rcode (SERVFAIL, REFUSED, …): relayed, not cached.
    #[error("upstream group {group} answered {rcode}")]
    Rcode { group: String, rcode: ResponseCode },
    #[error("failed to set up upstream group {group}")]
    Setup {
        group: String,
        #[source]
        source: NetError,
    },
}

/// All upstream groups of a policy.
pub struct Upstreams {
    groups: Vec<Group>,
    /// Zone (lowercase wire) to index in `groups`.
    zones: HashMap<Box<[u8]>, usize, FxBuildHasher>,
}

struct Group {
    /// `default`, or the group's first zone: the label in logs and metrics.
    name: String,
    pool: NameServerPool<TokioRuntimeProvider>,
    timeout: Duration,
    metrics: UpstreamMetrics,
    /// Set by a failure, cleared by an answer: failures are logged when they start and end,
    /// not once per query.
    failing: AtomicBool,
    /// Forwards in flight to this group (see [`GROUP_IN_FLIGHT`]).
    in_flight: AtomicU32,
}

/// Forwards in flight to one group at most: a dead group's timeouts cannot take the whole
/// in-flight budget from the other groups.
pub const GROUP_IN_FLIGHT: u32 = 3072;

/// A forward admitted to its group, counted there until dropped.
pub struct Admitted {
    upstreams: Arc<Upstreams>,
    group: usize,
}

impl Admitted {
    /// Asks the admitted group: the upstream's answer as wire bytes (ID and OPT as the upstream
    /// sent them). The question goes upstream in lowercase, with RD, the client's CD and DO,
    /// and our UDP size.
    pub async fn forward(&self, query: &Query<'_>) -> Result<Vec<u8>, UpstreamError> {
        self.upstreams
            .forward_to(&self.upstreams.groups[self.group], query)
            .await
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let group = &self.upstreams.groups[self.group];
        group.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Upstreams {
    /// The groups' labels in logs and metrics.
    pub fn group_names(&self) -> impl Iterator<Item = &str> {
        self.groups.iter().map(|g| g.name.as_str())
    }

    /// `configs` has the default group first (as `Config` orders them).
    pub fn new(configs: &[UpstreamConfig], metrics: &Metrics) -> Result<Upstreams, UpstreamError> {
        let mut groups = Vec::with_capacity(configs.len());
        let mut zones = HashMap::default();
        for (i, config) in configs.iter().enumerate() {
            let name = config
                .zones
                .first()
                .map_or_else(|| "default".to_owned(), |z| name::to_text(z));
            for zone in &config.zones {
                zones.insert(zone.clone().into_boxed_slice(), i);
            }
            let mut options = ResolverOpts::default();
            options.timeout = config.timeout;
            options.attempts = 0;
            let tls = TlsConfig::new().map_err(|source| UpstreamError::Setup {
                group: name.clone(),
                source,
            })?;
            let servers = config.servers.iter().map(|addr| {
                let mut server = NameServerConfig::udp_and_tcp(addr.ip());
                for connection in &mut server.connections {
                    connection.port = addr.port();
                }
                server
            });
            let context = Arc::new(PoolContext::new(options, tls));
            let pool =
                NameServerPool::from_config(servers, context, TokioRuntimeProvider::default());
            groups.push(Group {
                metrics: metrics.upstream(&name),
                name,
                pool,
                timeout: config.timeout,
                failing: AtomicBool::new(false),
                in_flight: AtomicU32::new(0),
            });
        }
        Ok(Upstreams { groups, zones })
    }

    /// The group for `name`: the longest configured zone containing it, else the default.
    fn group_for(&self, name: &[u8]) -> usize {
        let conditional = name::suffixes(name).find_map(|(_, suffix)| self.zones.get(suffix));
        conditional.copied().unwrap_or(0)
    }

    /// Admits a forward of `name` to its group, unless the group has [`GROUP_IN_FLIGHT`] in
    /// flight already.
    pub fn admit(self: &Arc<Self>, name: &[u8]) -> Option<Admitted> {
        let group = self.group_for(name);
        let count = &self.groups[group].in_flight;
        if count.fetch_add(1, Ordering::Relaxed) >= GROUP_IN_FLIGHT {
            count.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(Admitted {
            upstreams: self.clone(),
            group,
        })
    }

    /// Asks `group` and returns the upstream's answer as wire bytes (ID and OPT as the
    /// upstream sent them). The question goes upstream in lowercase, with RD, the client's CD
    /// and DO, and our UDP size.
    async fn forward_to(&self, group: &Group, query: &Query<'_>) -> Result<Vec<u8>, UpstreamError> {
        let started = Instant::now();
        let result = exchange(group, query).await;
        group
            .metrics
            .duration
            .observe(started.elapsed().as_secs_f64());
        let label = match &result {
            Ok(_) => UpstreamResult::Ok,
            Err(UpstreamError::Timeout { .. }) => UpstreamResult::Timeout,
            Err(_) => UpstreamResult::Error,
        };
        group.metrics.result(label);
        match &result {
            Ok(_)
                if group.failing.load(Ordering::Relaxed)
                    && group.failing.swap(false, Ordering::Relaxed) =>
            {
                info!(group = %group.name, "upstream group answers again");
            }
            Err(err) if !group.failing.swap(true, Ordering::Relaxed) => {
                warn!(group = %group.name, %err, "upstream group failing; further failures are counted, not logged");
            }
            _ => {}
        }
        result
    }
}

/// One exchange with the group, bounded by its timeout.
async fn exchange(group: &Group, query: &Query<'_>) -> Result<Vec<u8>, UpstreamError> {
    let question = question(query);
    let mut message = Message::query();
    message.metadata.recursion_desired = true;
    message.metadata.checking_disabled = query.checking_disabled();
    message.add_query(question.clone());
    let mut edns = Edns::new();
    edns.set_max_payload(OUR_UDP_PAYLOAD)
        .set_dnssec_ok(query.dnssec_ok());
    message.set_edns(edns);
    let mut options = DnsRequestOptions::default();
    options.use_edns = true;
    options.edns_set_dnssec_ok = query.dnssec_ok();
    options.recursion_desired = true;
    let request = DnsRequest::new(message, options);

    let answer = tokio::time::timeout(group.timeout, group.pool.send(request).first_answer()).await;
    let fail = |source| UpstreamError::Failed {
        group: group.name.clone(),
        source,
    };
    match answer {
        // Our bound, or the pool's own per-server timeout: the same for the client.
        Err(_) | Ok(Err(NetError::Timeout)) => Err(UpstreamError::Timeout {
            group: group.name.clone(),
            timeout: group.timeout,
        }),
        Ok(Ok(response)) => Ok(response.into_buffer()),
        Ok(Err(NetError::Dns(DnsError::NoRecordsFound(negative)))) => {
            let mut message = Message::response(0, OpCode::Query);
            message.metadata.recursion_available = true;
            message.metadata.response_code = negative.response_code;
            message.add_query(*negative.query);
            match (negative.authorities, negative.soa) {
                (Some(authorities), _) => message.insert_authorities(authorities.to_vec()),
                (None, Some(soa)) => message.insert_authorities(vec![soa.into_record_of_rdata()]),
                (None, None) => {}
            }
            message.to_vec().map_err(|err| fail(NetError::from(err)))
        }
        Ok(Err(NetError::Dns(DnsError::ResponseCode(rcode)))) => Err(UpstreamError::Rcode {
            group: group.name.clone(),
            rcode,
        }),
        Ok(Err(err)) => Err(fail(err)),
    }
}

fn question(query: &Query) -> hickory_resolver::proto::op::Query {
    let labels: Vec<&[u8]> = name::labels(query.name()).collect();
    let mut name = Name::from_labels(labels).unwrap_or_else(|_| Name::root());
    name.set_fqdn(true);
    let mut question =
        hickory_resolver::proto::op::Query::query(name, RecordType::from(query.qtype));
    question.set_query_class(DNSClass::from(query.qclass));
    question
}
