//! `portvakt catalogue diff` and `resolve`: a list against a published catalogue, and a
//! top-sites file resolved into an IP list.

use std::path::Path;
use std::process::ExitCode;

use super::{ConfigArg, Exit, compile, print_bytes, report};

/// A catalogue of more than this is refused.
const MAX_CATALOGUE: u64 = 64 << 20;

pub(super) async fn diff(arg: &ConfigArg, source: &str, list: Option<&str>) -> ExitCode {
    let policy = match compile(arg) {
        Ok(policy) => policy,
        Err(code) => return code,
    };
    let text = if source.starts_with("http://") || source.starts_with("https://") {
        portvakt::download(source, MAX_CATALOGUE)
            .await
            .map(|body| String::from_utf8_lossy(&body).into_owned())
            .map_err(|err| format!("cannot download {source}: {}", portvakt::error_chain(&err)))
    } else {
        std::fs::read(source)
            .map_err(|err| format!("cannot read {source}: {err}"))
            .and_then(|bytes| {
                let len = bytes.len() as u64;
                (len <= MAX_CATALOGUE)
                    .then(|| String::from_utf8_lossy(&bytes).into_owned())
                    .ok_or_else(|| format!("{source} is over {MAX_CATALOGUE} bytes"))
            })
    };
    let text = match text {
        Ok(text) => text,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(Exit::Invalid);
        }
    };
    let diff = match portvakt::catalogue_diff(&policy, list, std::path::Path::new(source), &text) {
        Ok(diff) => diff,
        Err(err) => {
            report(&err);
            return ExitCode::from(Exit::Invalid);
        }
    };
    let compared = list.map_or("the blocked lists".to_owned(), |l| format!("list {l}"));
    eprintln!(
        "{source}: {} names ({} lines not names, {} addresses not compared); blocked by {compared}: {}, missing: {}",
        diff.names,
        diff.rejected,
        diff.addresses,
        diff.names - diff.missing.len(),
        diff.missing.len()
    );
    let mut out = String::new();
    for name in &diff.missing {
        out.push_str(name);
        out.push('\n');
    }
    match print_bytes(out.as_bytes()) {
        code if code != ExitCode::SUCCESS => code,
        _ if diff.missing.is_empty() => ExitCode::SUCCESS,
        _ => ExitCode::from(Exit::Failure),
    }
}

pub(super) async fn resolve(arg: &ConfigArg, path: &Path, list: &str, parallel: usize) -> ExitCode {
    let policy = match compile(arg) {
        Ok(policy) => policy,
        Err(code) => return code,
    };
    let text = match std::fs::read(path) {
        Ok(bytes) if bytes.len() as u64 <= MAX_CATALOGUE => {
            String::from_utf8_lossy(&bytes).into_owned()
        }
        Ok(_) => {
            eprintln!("error: {} is over {MAX_CATALOGUE} bytes", path.display());
            return ExitCode::from(Exit::Invalid);
        }
        Err(err) => {
            eprintln!("error: cannot read {}: {err}", path.display());
            return ExitCode::from(Exit::Invalid);
        }
    };
    let names: Vec<String> = (text.lines())
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(|l| l.rsplit(',').next().unwrap_or(l).trim().to_owned())
        .collect();
    let reach = match portvakt::catalogue_reach(&policy, list, &names, parallel).await {
        Ok(reach) => reach,
        Err(err) => {
            report(&err);
            return ExitCode::from(Exit::Invalid);
        }
    };
    eprintln!(
        "{}: {} names, {} without an address; inside list {list}: {}",
        path.display(),
        reach.names,
        reach.unresolved,
        reach.inside.len()
    );
    if reach.names > 0 && reach.unresolved == reach.names {
        eprintln!("error: no name resolved: check the config's upstreams");
        return ExitCode::from(Exit::Invalid);
    }
    let mut out = String::new();
    for (name, addr) in &reach.inside {
        out.push_str(&format!("{name}\t{addr}\n"));
    }
    match print_bytes(out.as_bytes()) {
        code if code != ExitCode::SUCCESS => code,
        _ if reach.inside.is_empty() => ExitCode::SUCCESS,
        _ => ExitCode::from(Exit::Failure),
    }
}
