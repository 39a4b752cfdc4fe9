//! `portvakt check`, `explain` and `export`: the config and lists read and compiled, shown as
//! the views the admin API shows, or rendered for the firewall. Nothing is served.

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;

use portvakt::{ExportFormat, Metrics, views};

use super::{ConfigArg, Exit, ExportArg, compile, load, print_bytes, print_to_stdout, report};

pub(super) async fn check(arg: ConfigArg, strict: bool) -> ExitCode {
    let policy = match compile(&arg) {
        Ok(policy) => policy,
        Err(code) => return code,
    };
    let checked = views::Check::of(&policy).text();
    if let Err(code) = print_to_stdout(|out| out.write_all(checked.as_bytes())) {
        return code;
    }
    // Expectations that refuse failed the compile already; these warn only, and still fail.
    let (_, broken) = policy.self_test(&Metrics::new());
    for message in &broken {
        eprintln!("error: {message} (on_fail = \"warn\")");
    }
    if !broken.is_empty() {
        return ExitCode::from(Exit::Failure);
    }
    let rejected: usize = policy.lists().iter().map(|l| l.rejected.len()).sum();
    if strict && rejected > 0 {
        eprintln!("error: {rejected} list lines were rejected (--strict)");
        return ExitCode::from(Exit::Failure);
    }
    ExitCode::SUCCESS
}

pub(super) async fn explain(
    arg: ConfigArg,
    client: IpAddr,
    listener: Option<SocketAddr>,
    name: &str,
) -> ExitCode {
    let policy = match compile(&arg) {
        Ok(policy) => policy,
        Err(code) => return code,
    };
    let explanation = match policy.explain(client, listener, name) {
        Ok(explanation) => explanation.locate(),
        Err(err) => {
            eprintln!("error: `{name}` is not a domain name: {err}");
            return ExitCode::from(Exit::Invalid);
        }
    };
    let text = views::ExplainView::of(&policy, client, &explanation, false).text();
    print_bytes(text.as_bytes())
}

pub(super) fn export(arg: &ConfigArg, format: ExportArg) -> ExitCode {
    let config = match load(arg) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let format = match format {
        ExportArg::Nftables => ExportFormat::Nftables,
        ExportArg::Cidr => ExportFormat::Cidr,
        ExportArg::Json => ExportFormat::Json,
    };
    if matches!(format, ExportFormat::Nftables) {
        for warning in portvakt::export_warnings(&config) {
            eprintln!("warning: {warning}");
        }
    }
    match portvakt::export(&config, format) {
        Ok(text) => print_bytes(text.as_bytes()),
        Err(err) => {
            report(&err);
            ExitCode::from(Exit::Invalid)
        }
    }
}
