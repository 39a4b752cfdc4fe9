//! Config and list files to a `Policy`: reads every list file, builds the one suffix index
//! over all lists, the segment table, the prepared block answers and the upstream groups.
//! Runs off the hot path; the running policy keeps serving until the new one is swapped in.

use std::sync::Arc;
use std::time::SystemTime;

use crate::bypass::BypassKind;
use crate::client::ratelimit::{Rate, RateLimiter};
use crate::client::segment::{NO_SEGMENT, SegmentId, SegmentTable};
use crate::config::{Config, ListConfig, OnFail, SegmentConfig};
use crate::ddr::Advertisement;
use crate::evidence::identity::EntryDigest;
use crate::lists::{self, EntryKind, Item, ListError};
use crate::metrics::Metrics;
use crate::policy::index::{IndexBuilder, ListId, ListSet};
use crate::policy::networks::NetworkIndex;
use crate::policy::probe::{Samples, probes};
use crate::policy::{BlockAnswers, List, Policy, PolicyMetrics, Segment};
use crate::upstream::Upstreams;

/// Why a checked config could still not become a policy.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error(transparent)]
    List(#[from] ListError),
    #[error(
        "list \"{list}\": no downloaded copy of {url} yet (`portvakt serve` downloads it at start)"
    )]
    NoCopy { list: String, url: String },
    #[error("{}:{line}: list \"{list}\" has more than its max_entries ({max}) entries; refused", path.display())]
    TooManyEntries {
        list: String,
        path: std::path::PathBuf,
        line: u32,
        max: u64,
    },
    /// Expectations (`[[expect]]`, `on_fail = "refuse"`) the policy breaks, one line each.
    #[error("the policy breaks {} expectation(s), so it is refused:\n{}", broken.len(), broken.join("\n"))]
    Expectations { broken: Vec<String> },
}

impl Policy {
    /// Builds the policy for `config`, reading its list files, and resolves its metric
    /// handles in `metrics`. `generation` is the one it will have in force (0: never put in
    /// force, as for `check`). A policy that breaks an expectation that refuses is an error.
    pub fn compile(
        config: Config,
        metrics: &Metrics,
        generation: u64,
    ) -> Result<Policy, CompileError> {
        let policy = Policy::build(config, metrics, generation)?;
        match policy.refused_by_expectations() {
            Some(err) => Err(err),
            None => Ok(policy),
        }
    }

    /// The expectations with `on_fail = "refuse"` that this policy breaks, as the error.
    pub(crate) fn refused_by_expectations(&self) -> Option<CompileError> {
        let (broken, _) = self.check_expectations();
        let refused: Vec<String> = (broken.into_iter())
            .filter(|b| b.on_fail == OnFail::Refuse)
            .map(|b| b.message)
            .collect();
        (!refused.is_empty()).then_some(CompileError::Expectations { broken: refused })
    }

    /// [`Policy::compile`] without judging the expectations (the reload judges them beside
    /// its other guards, so a refusal names every reason at once).
    pub(crate) fn build(
        config: Config,
        metrics: &Metrics,
        generation: u64,
    ) -> Result<Policy, CompileError> {
        let mut index = IndexBuilder::default();
        let mut addresses = NetworkIndex::default();
        let mut digest = EntryDigest::new(config.lists.len());
        let mut samples = Samples::new(config.lists.len());
        let read = (&mut index, &mut addresses, &mut digest, &mut samples);
        let lists = read_lists(&config, read)?;
        let hash = digest.finish(&config);
        let list_digests = digest.sums().to_vec();
        let index = index.build();
        let networks = config.segments.iter().enumerate().flat_map(|(id, s)| {
            s.networks
                .iter()
                .map(move |net| (*net, SegmentId(id as u16)))
        });
        let listeners = config.segments.iter().enumerate().flat_map(|(id, s)| {
            s.listeners
                .iter()
                .map(move |addr| (*addr, SegmentId(id as u16)))
        });
        let table =
            SegmentTable::new(networks, config.unknown_clients).with_listeners(listeners.collect());
        let probes = probes(&config, &samples, &index, &table);
        let policy = Policy {
            segments: config
                .segments
                .iter()
                .map(|s| segment(s, addresses.lists(), &config.lists))
                .collect(),
            networks: addresses,
            list_bypass: config.lists.iter().map(|l| l.bypass).collect(),
            table,
            lists,
            probes,
            index,
            block: BlockAnswers::new(&config.block, &config.lists),
            advertisement: Advertisement::new(&config.encrypted),
            hash,
            list_digests,
            upstreams: Arc::new(Upstreams::new(&config.upstreams, metrics)),
            limiter: config.segments.iter().any(|s| s.rate.is_some()).then(|| {
                let settings = &config.rate_limit;
                let exempt = settings.exempt.clone();
                RateLimiter::new(
                    settings.clients,
                    settings.ipv6_prefix,
                    settings.slip,
                    exempt,
                )
            }),
            metrics: policy_metrics(&config, metrics),
            generation,
            loaded_at: SystemTime::now(),
            config,
        };
        Ok(policy)
    }
}

/// Reads every file of every list into `index` (names) and `networks` (IP entries); a list
/// with `urls` needs their copies.
fn read_lists(
    config: &Config,
    (index, networks, digest, samples): (
        &mut IndexBuilder,
        &mut NetworkIndex,
        &mut EntryDigest,
        &mut Samples,
    ),
) -> Result<Vec<List>, CompileError> {
    let mut lists = Vec::with_capacity(config.lists.len());
    for (id, list) in config.lists.iter().enumerate() {
        let id = ListId(id as u8);
        if let Some(missing) = list.remote.iter().find(|r| !r.copy.exists()) {
            return Err(CompileError::NoCopy {
                list: list.name.clone(),
                url: missing.url.clone(),
            });
        }
        let mut loaded = List {
            name: list.name.clone(),
            files: list.sources().map(ToOwned::to_owned).collect(),
            entries: 0,
            rejected: Vec::new(),
        };
        for path in list.sources() {
            let mut over = None;
            let rejected = lists::read_as(path, list.kind, list.limits, |item, line| {
                if loaded.entries as u64 >= list.max_entries {
                    over.get_or_insert(line);
                    return;
                }
                match item {
                    Item::Name(name, kind) => {
                        let tag = if kind == EntryKind::Block { 0 } else { 1 };
                        digest.add(id.index(), tag, name);
                        if kind == EntryKind::Block {
                            samples.offer(id.index(), name);
                        }
                        index.insert(name, id, kind);
                    }
                    Item::Network(net) => {
                        digest.add(id.index(), 2, net.to_string().as_bytes());
                        networks.insert(net, id);
                    }
                }
                loaded.entries += 1;
            })?;
            if let Some(line) = over {
                return Err(CompileError::TooManyEntries {
                    list: list.name.clone(),
                    path: path.to_owned(),
                    line,
                    max: list.max_entries,
                });
            }
            loaded.rejected.extend(rejected);
        }
        lists.push(loaded);
    }
    Ok(lists)
}

/// A segment with its lists as bitsets, and its block lists in config order; `ip_lists` are
/// the lists with IP entries.
fn segment(config: &SegmentConfig, ip_lists: ListSet, lists: &[ListConfig]) -> Segment {
    let set = |ids: &[ListId]| {
        let mut set = ListSet::default();
        ids.iter().for_each(|&id| set.insert(id));
        set
    };
    let block = set(&config.block);
    Segment {
        name: config.name.clone(),
        blocks_addresses: !block.intersect(ip_lists).is_empty(),
        telegram_fallback: (config.block.iter())
            .find(|&&id| lists[id.index()].bypass == Some(BypassKind::TelegramFallback))
            .copied(),
        bypass: config.bypass,
        advertise: config.advertise_encrypted,
        rate: config.rate.map(|(qps, burst)| Rate { qps, burst }),
        block,
        allow: set(&config.allow),
        block_order: config.block.clone(),
    }
}

/// Each segment's handles (with one blocked counter per list it blocks), and those of
/// clients in no segment.
fn policy_metrics(config: &Config, metrics: &Metrics) -> PolicyMetrics {
    let lists = config.lists.len();
    let segments = config
        .segments
        .iter()
        .map(|s| {
            let blocked: Vec<(usize, &str)> = s
                .block
                .iter()
                .map(|&id| (id.index(), config.lists[id.index()].name.as_str()))
                .collect();
            metrics.segment(&s.name, &blocked, lists)
        })
        .collect();
    PolicyMetrics {
        segments,
        no_segment: metrics.segment(NO_SEGMENT, &[], lists),
    }
}
