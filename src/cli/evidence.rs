//! `portvakt report` and `portvakt audit verify`: the evidence under `state_dir`, read while
//! the gateway may be running.

use std::process::ExitCode;

use portvakt::views;

use super::{ConfigArg, Exit, ReportArg, load, print_bytes, report, state_dir};

pub(super) fn compliance_report(
    arg: &ConfigArg,
    from: Option<&str>,
    to: Option<&str>,
    format: ReportArg,
) -> ExitCode {
    let config = match load(arg) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let state_dir = match state_dir(&config, "evidence store") {
        Ok(dir) => dir,
        Err(code) => return code,
    };
    let (from, to) = match portvakt::report_period(from, to) {
        Ok(period) => period,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(Exit::Invalid);
        }
    };
    let made = match portvakt::report_from(state_dir, &from, &to) {
        Ok(made) => made,
        Err(err) => {
            report(&err);
            return ExitCode::from(Exit::Failure);
        }
    };
    if config.report.top_clients > 0 {
        eprintln!(
            "note: top clients come only from the running gateway (GET /api/v1/report): \
             their pseudonyms' key is in its memory alone"
        );
    }
    let text = match format {
        ReportArg::Text => made.text(),
        ReportArg::Csv => made.csv(),
        ReportArg::Json => serde_json::to_string_pretty(&made).expect("a report serializes") + "\n",
    };
    print_bytes(text.as_bytes())
}

pub(super) fn audit_verify(arg: &ConfigArg) -> ExitCode {
    let config = match load(arg) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let state_dir = match state_dir(&config, "audit log") {
        Ok(dir) => dir,
        Err(code) => return code,
    };
    match portvakt::audit_verify(state_dir) {
        Ok(verified) => print_bytes(
            views::AuditView::intact(&verified, state_dir)
                .text()
                .as_bytes(),
        ),
        Err(err) => {
            report(&err);
            ExitCode::from(Exit::Failure)
        }
    }
}
