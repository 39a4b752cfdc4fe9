//! Lists downloaded over HTTP(S) (`urls` of a list). Each URL's last good download is kept in
//! `state_dir/lists/` with its validators (ETag, Last-Modified), so a refresh is a conditional
//! GET and a start with the source down still has the list. The policy reads those copies
//! like any list file; this module only decides whether a download may replace one.
//!
//! The shrink guard: a download that loses more than `max_shrink` of the copy's entries is
//! rejected, since a truncated download must not unblock most of a list.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{ETAG, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::config::{Config, ListConfig, RemoteSource};
use crate::error;
use crate::lists;
use crate::metrics::Metrics;
use crate::upstream::Upstreams;

/// One request's limit, so a stalled source cannot hold a refresh or the start forever.
const FETCH_TIMEOUT: Duration = Duration::from_secs(20);
/// A list larger than this is refused (a 1M-name list is about 30 MB).
const MAX_BODY: usize = 256 << 20;

/// What is known about a copy, kept beside it as `<copy>.meta.json`.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Meta {
    url: String,
    etag: Option<String>,
    last_modified: Option<String>,
    entries: usize,
}

fn meta_path(copy: &Path) -> PathBuf {
    let mut path = copy.as_os_str().to_owned();
    path.push(".meta.json");
    PathBuf::from(path)
}

fn read_meta(copy: &Path) -> Option<Meta> {
    let text = std::fs::read_to_string(meta_path(copy)).ok()?;
    serde_json::from_str(&text).ok()
}

/// Why a download gave no new copy.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("request failed")]
    Request(#[source] reqwest::Error),
    #[error("HTTP {0}")]
    Status(StatusCode),
    /// Refused while streaming, whatever the server said about the length.
    #[error("larger than the list's max_bytes ({0} bytes)")]
    TooLarge(u64),
    #[error("cannot write {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the download's check did not finish")]
    Task(#[source] tokio::task::JoinError),
}

/// A list source that has no copy yet and could not be downloaded: the list would silently
/// be empty, so the start (or the reload) stops.
#[derive(Debug, thiserror::Error)]
#[error("list \"{list}\": no copy of {url} yet and the download failed")]
pub struct NoCopyError {
    pub list: String,
    pub url: String,
    #[source]
    pub source: FetchError,
}

/// What one download did to one source's copy.
#[derive(Debug)]
pub enum Update {
    /// A new copy with this many entries.
    Updated {
        entries: usize,
    },
    NotModified,
    /// The shrink guard kept the old copy.
    Rejected {
        old: usize,
        new: usize,
    },
    Failed(FetchError),
}

impl Update {
    pub fn label(&self) -> &'static str {
        match self {
            Update::Updated { .. } => "updated",
            Update::NotModified => "not_modified",
            Update::Rejected { .. } => "rejected",
            Update::Failed(_) => "failed",
        }
    }
}

/// Downloads list sources and keeps their copies.
#[derive(Clone)]
pub struct Fetcher {
    /// Built on first use: loading the root certificates costs time and memory that a
    /// config without `urls` does not need.
    client: Arc<OnceLock<reqwest::Client>>,
    resolver: Arc<UpstreamResolver>,
    metrics: Arc<Metrics>,
}

/// The upstream groups to resolve with now: the running policy's.
pub type CurrentUpstreams = Box<dyn Fn() -> Arc<Upstreams> + Send + Sync>;

/// Resolves the host names of list URLs through portvakt's own upstream groups.
#[derive(Default)]
struct UpstreamResolver {
    current: Mutex<Option<Arc<CurrentUpstreams>>>,
}

impl reqwest::dns::Resolve for UpstreamResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let current = self.current.lock().expect("not poisoned").clone();
        Box::pin(async move {
            let current = current.ok_or("no upstream groups to resolve list hosts with")?;
            let addresses = current().resolve(name.as_str()).await?;
            let addrs: reqwest::dns::Addrs =
                Box::new(addresses.into_iter().map(|ip| SocketAddr::new(ip, 0)));
            Ok(addrs)
        })
    }
}

impl Fetcher {
    pub fn new(metrics: Arc<Metrics>) -> Fetcher {
        Fetcher {
            client: Arc::default(),
            resolver: Arc::default(),
            metrics,
        }
    }

    /// List hosts are resolved through `current()` from now on.
    pub fn resolve_with(&self, current: CurrentUpstreams) {
        *self.resolver.current.lock().expect("not poisoned") = Some(Arc::new(current));
    }

    fn client(&self) -> &reqwest::Client {
        self.client.get_or_init(|| {
            reqwest::Client::builder()
                .user_agent(concat!("portvakt/", env!("CARGO_PKG_VERSION")))
                .timeout(FETCH_TIMEOUT)
                .dns_resolver(self.resolver.clone())
                .build()
                .expect("an HTTP client with the built-in TLS settings")
        })
    }

    /// Fetches every source of every list; `only_missing` skips sources that have a copy.
    /// Fails if a download fails for a source that has no copy. (Any other download leaves a
    /// copy: a 304 or the shrink guard need one to compare with.)
    pub async fn prepare(&self, config: &Config, only_missing: bool) -> Result<(), NoCopyError> {
        for list in config.lists.iter().filter(|l| !l.remote.is_empty()) {
            self.metrics.list_update_series(&list.name);
            for source in &list.remote {
                if only_missing && source.copy.exists() {
                    continue;
                }
                if let Update::Failed(cause) = self.update(list, source).await
                    && !source.copy.exists()
                {
                    return Err(NoCopyError {
                        list: list.name.clone(),
                        url: source.url.clone(),
                        source: cause,
                    });
                }
            }
        }
        Ok(())
    }

    /// One conditional GET of `source`; replaces its copy if the download passes the guard.
    pub async fn update(&self, list: &ListConfig, source: &RemoteSource) -> Update {
        let update = self.try_update(list, source).await;
        self.metrics.list_update(&list.name, update.label());
        match &update {
            Update::Updated { entries } => {
                info!(list = %list.name, url = %source.url, entries, "list downloaded")
            }
            Update::NotModified => {}
            Update::Rejected { old, new } => warn!(
                list = %list.name, url = %source.url, old, new,
                "list download rejected: it loses more than max_shrink of the entries; keeping the last good copy"
            ),
            Update::Failed(why) => {
                let error = error::chain(why);
                warn!(list = %list.name, url = %source.url, %error, "list download failed; keeping the last good copy")
            }
        }
        update
    }

    async fn try_update(&self, list: &ListConfig, source: &RemoteSource) -> Update {
        let old = if source.copy.exists() {
            read_meta(&source.copy)
        } else {
            None
        };
        let mut request = self.client().get(&source.url);
        if let Some(meta) = &old {
            if let Some(etag) = &meta.etag {
                request = request.header(IF_NONE_MATCH, etag);
            }
            if let Some(date) = &meta.last_modified {
                request = request.header(IF_MODIFIED_SINCE, date);
            }
        }
        let mut response = match request.send().await {
            Ok(response) => response,
            Err(err) => return Update::Failed(FetchError::Request(err)),
        };
        if response.status() == StatusCode::NOT_MODIFIED && old.is_some() {
            return Update::NotModified;
        }
        if !response.status().is_success() {
            return Update::Failed(FetchError::Status(response.status()));
        }
        let limit = list.limits.max_bytes.min(MAX_BODY as u64);
        let header = |name| {
            response
                .headers()
                .get(name)
                .and_then(|v: &reqwest::header::HeaderValue| v.to_str().ok())
                .map(str::to_owned)
        };
        let (etag, last_modified) = (header(ETAG), header(LAST_MODIFIED));
        let body = match read_body(&mut response, limit).await {
            Ok(body) => body,
            Err(err) => return Update::Failed(err),
        };
        let copy = source.copy.clone();
        let max_shrink = list.max_shrink;
        let meta = Meta {
            url: source.url.clone(),
            etag,
            last_modified,
            entries: 0,
        };
        let old_entries = old.map(|m| m.entries);
        tokio::task::spawn_blocking(move || store(&copy, &body, meta, old_entries, max_shrink))
            .await
            .unwrap_or_else(|err| Update::Failed(FetchError::Task(err)))
    }
}

/// A response's body, refused at `limit` bytes: by its length header, and while it streams,
/// so a body sent without a length (chunked, or until the connection closes) is never held
/// whole past it.
async fn read_body(response: &mut reqwest::Response, limit: u64) -> Result<Vec<u8>, FetchError> {
    if response
        .content_length()
        .is_some_and(|length| length > limit)
    {
        return Err(FetchError::TooLarge(limit));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(FetchError::Request)? {
        if (body.len() + chunk.len()) as u64 > limit {
            return Err(FetchError::TooLarge(limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// One GET of `url` outside the gateway (the system's resolver), for the command line: the
/// body, within `limit` bytes and the list downloads' timeout.
pub async fn download(url: &str, limit: u64) -> Result<Vec<u8>, FetchError> {
    let client = reqwest::Client::builder()
        .user_agent(concat!("portvakt/", env!("CARGO_PKG_VERSION")))
        .timeout(FETCH_TIMEOUT)
        .build()
        .map_err(FetchError::Request)?;
    let mut response = client.get(url).send().await.map_err(FetchError::Request)?;
    if !response.status().is_success() {
        return Err(FetchError::Status(response.status()));
    }
    read_body(&mut response, limit.min(MAX_BODY as u64)).await
}

/// Counts the download's entries, applies the shrink guard, and replaces the copy atomically.
fn store(copy: &Path, body: &[u8], mut meta: Meta, old: Option<usize>, max_shrink: f64) -> Update {
    let text = String::from_utf8_lossy(body);
    let mut entries = 0usize;
    lists::parse_with(copy, &text, |_, _| entries += 1);
    if let Some(old) = old {
        let kept = entries as f64 / old.max(1) as f64;
        if old > 0 && kept < 1.0 - max_shrink {
            return Update::Rejected { old, new: entries };
        }
    }
    meta.entries = entries;
    let write = || -> std::io::Result<()> {
        let dir = copy.parent().expect("copies live in state_dir/lists");
        std::fs::create_dir_all(dir)?;
        let tmp = copy.with_extension("tmp");
        std::fs::write(&tmp, body)?;
        std::fs::rename(&tmp, copy)?;
        let meta_tmp = copy.with_extension("meta.tmp");
        std::fs::write(&meta_tmp, serde_json::to_vec(&meta)?)?;
        std::fs::rename(&meta_tmp, meta_path(copy))
    };
    match write() {
        Ok(()) => Update::Updated { entries },
        Err(source) => Update::Failed(FetchError::Write {
            path: copy.to_owned(),
            source,
        }),
    }
}
