//! The admin HTTP listener (`[admin] listen`): `/metrics` in the Prometheus text format,
//! `/healthz` (the process answers), `/readyz` (a policy is loaded and the DNS listeners are
//! bound), `/api/v1/status` and `/api/v1/explain` as JSON, all open; and `POST
//! /api/v1/reload`, which needs the bearer token of `[admin] token_file` (without one, it is
//! served only on a loopback listener). What it reports is owned by `Gateway`, `Metrics`
//! and `Reloader`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::error;
use crate::evidence::report::Recorder;
use crate::gateway::Gateway;
use crate::name;
use crate::reload::{Override, Reloader, Trigger};
use crate::transport::ListenAddrs;
use views::{ErrorView, ExplainView, ReloadView, Status};

mod auth;
pub mod views;

/// Why the admin listener could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("failed to bind the admin listener {addr}")]
pub struct AdminBindError {
    pub addr: SocketAddr,
    #[source]
    pub source: std::io::Error,
}

/// A running admin listener; it stops when the shutdown token it was given is cancelled.
pub struct Admin {
    pub addr: SocketAddr,
    ready: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

#[derive(Clone)]
struct AppState {
    gateway: Arc<Gateway>,
    reloader: Arc<Reloader>,
    /// The admin listener's own address: without a token, mutating needs it on loopback.
    admin: SocketAddr,
    ready: Arc<AtomicBool>,
    dns: Arc<ListenAddrs>,
    /// The evidence store, with `state_dir`.
    evidence: Option<Arc<Recorder>>,
}

impl Admin {
    /// Binds `addr` and serves until `stop` is cancelled; call once the DNS listeners are
    /// bound (`ready` starts true).
    pub async fn start(
        addr: SocketAddr,
        reloader: Arc<Reloader>,
        dns: &ListenAddrs,
        evidence: Option<Arc<Recorder>>,
        stop: CancellationToken,
    ) -> Result<Admin, AdminBindError> {
        let bind_error = |source| AdminBindError { addr, source };
        let listener = TcpListener::bind(addr).await.map_err(bind_error)?;
        let bound = listener.local_addr().map_err(bind_error)?;
        let ready = Arc::new(AtomicBool::new(true));
        let state = AppState {
            gateway: reloader.gateway().clone(),
            reloader,
            admin: bound,
            ready: ready.clone(),
            dns: Arc::new(dns.clone()),
            evidence,
        };
        let router = Router::new()
            .route("/metrics", get(metrics))
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(readyz))
            .route("/api/v1/status", get(status))
            .route("/api/v1/explain", get(explain))
            .route("/api/v1/report", get(report))
            .route("/api/v1/reload", post(reload))
            .layer(axum::middleware::from_fn_with_state(
                state.clone(),
                auth::guard,
            ))
            .with_state(state);
        let task = tokio::spawn(async move {
            let serve =
                axum::serve(listener, router).with_graceful_shutdown(stop.cancelled_owned());
            if let Err(err) = serve.await {
                tracing::error!(%err, "admin listener failed");
            }
        });
        Ok(Admin {
            addr: bound,
            ready,
            task,
        })
    }

    /// `/readyz` says 503 from now on (the gateway is going away).
    pub fn set_not_ready(&self) {
        self.ready.store(false, Ordering::Relaxed);
    }

    /// Waits until the listener has stopped (after its shutdown token was cancelled).
    pub async fn stopped(self) {
        let _ = self.task.await;
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    let metrics = state.gateway.metrics();
    metrics.cache_entries.set(state.gateway.cache_len() as i64);
    match prometheus::TextEncoder::new().encode_to_string(&metrics.registry().gather()) {
        Ok(text) => ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], text).into_response(),
        Err(err) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("failed to encode metrics: {err}\n"),
        )
            .into_response(),
    }
}

async fn readyz(State(state): State<AppState>) -> Response {
    if state.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response()
    }
}

async fn status(State(state): State<AppState>) -> axum::Json<Status> {
    let (cache_entries, reload) = (state.gateway.cache_len(), state.reloader.status());
    let status = (state.gateway).with_policy(|p| Status::of(p, &state.dns, cache_entries, reload));
    axum::Json(status)
}

#[derive(Deserialize)]
struct ReloadParams {
    /// Lists (comma-separated) that may shrink beyond their `max_shrink` in this reload.
    allow_shrink: Option<String>,
    /// Why: required with `allow_shrink`, written to the audit log.
    reason: Option<String>,
}

async fn reload(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(params): Query<ReloadParams>,
) -> Response {
    if let Some(refused) = auth::refuse_mutation(&state, &headers) {
        return refused;
    }
    let accepted = match (params.allow_shrink, params.reason) {
        (None, _) => None,
        (Some(lists), Some(reason)) if !reason.trim().is_empty() => Some(Override {
            allow_shrink: lists.split(',').map(|l| l.trim().to_owned()).collect(),
            reason,
        }),
        (Some(_), _) => {
            let message = "allow_shrink needs a reason (it goes to the audit log)";
            return (StatusCode::BAD_REQUEST, axum::Json(ErrorView::new(message))).into_response();
        }
    };
    match state
        .reloader
        .reload_accepting(Trigger::Api, accepted)
        .await
    {
        Ok(generation) => axum::Json(ReloadView::Success { generation }).into_response(),
        Err(err) => {
            let failure = ReloadView::Failure {
                error: error::chain(&*err),
                running_generation: state.gateway.generation(),
            };
            (StatusCode::UNPROCESSABLE_ENTITY, axum::Json(failure)).into_response()
        }
    }
}

#[derive(Deserialize)]
struct ReportParams {
    from: Option<String>,
    to: Option<String>,
    format: Option<String>,
}

/// The compliance report (JSON, or `format=text|csv`), with the counters flushed first and
/// today's top clients under pseudonyms when they are listed.
async fn report(State(state): State<AppState>, Query(params): Query<ReportParams>) -> Response {
    let Some(recorder) = state.evidence.clone() else {
        let message = "no evidence store: set [server] state_dir\n";
        return (StatusCode::NOT_FOUND, message).into_response();
    };
    let (from, to) =
        match crate::evidence::report::period(params.from.as_deref(), params.to.as_deref()) {
            Ok(period) => period,
            Err(message) => {
                return (StatusCode::BAD_REQUEST, format!("{message}\n")).into_response();
            }
        };
    let gateway = state.gateway.clone();
    let made = tokio::task::spawn_blocking(move || {
        let in_force = gateway.with_policy(|p| (p.hash().to_owned(), p.loaded_at()));
        recorder.record_now(in_force, gateway.metrics())?;
        let mut report = recorder.report(&from, &to)?;
        // Today's top clients, when today is in the period.
        report.top_clients = (gateway.top_clients()).filter(|t| from <= t.day && t.day <= to);
        Ok::<_, crate::evidence::report::StoreError>(report)
    })
    .await;
    let report = match made {
        Ok(Ok(report)) => report,
        Ok(Err(err)) => {
            let text = format!("{}\n", error::chain(&err));
            return (StatusCode::INTERNAL_SERVER_ERROR, text).into_response();
        }
        Err(_) => return (StatusCode::INTERNAL_SERVER_ERROR, "report failed\n").into_response(),
    };
    match params.format.as_deref() {
        None | Some("json") => axum::Json(report).into_response(),
        Some("text") => report.text().into_response(),
        Some("csv") => ([(header::CONTENT_TYPE, "text/csv")], report.csv()).into_response(),
        Some(other) => {
            let text = format!("format `{other}` is not json, text or csv\n");
            (StatusCode::BAD_REQUEST, text).into_response()
        }
    }
}

#[derive(Deserialize)]
struct ExplainParams {
    client: String,
    name: String,
    /// The listen address the query would arrive on (`10.10.0.53:53`), if it matters.
    listener: Option<String>,
}

async fn explain(State(state): State<AppState>, Query(params): Query<ExplainParams>) -> Response {
    let bad = |message: String| {
        (StatusCode::BAD_REQUEST, axum::Json(ErrorView::new(message))).into_response()
    };
    let Ok(client) = params.client.parse::<IpAddr>() else {
        return bad(format!("`{}` is not an IP address", params.client));
    };
    let listener = match params.listener.as_deref().map(str::parse::<SocketAddr>) {
        None => None,
        Some(Ok(listener)) => Some(listener),
        Some(Err(_)) => {
            let text = params.listener.unwrap_or_default();
            return bad(format!("`{text}` is not an address with a port"));
        }
    };
    let explained =
        (state.gateway).with_policy(|policy| policy.explain(client, listener, &params.name));
    let mut explanation = match explained {
        Ok(explanation) => explanation,
        Err(err) => return bad(format!("`{}` is not a domain name: {err}", params.name)),
    };
    // A forwarded name: its upstream answer (cached, else asked) is judged as a query's is.
    let is_name = params.name.parse::<IpAddr>().is_err();
    if let (true, Ok(wire)) = (
        is_name && explanation.is_forwarded(),
        name::from_text(&explanation.name),
    ) {
        for qtype in [1, 28] {
            let Some(answer) = state.gateway.lookup(&wire, qtype).await else {
                continue;
            };
            explanation = (state.gateway).with_policy(|policy| {
                policy.explain_answer(explanation, client, listener, &answer)
            });
            if !explanation.is_forwarded() {
                break;
            }
        }
    }
    // Finding the entry's line reads the list files: not on the runtime's workers.
    let Ok(explanation) = tokio::task::spawn_blocking(move || explanation.locate()).await else {
        return (StatusCode::INTERNAL_SERVER_ERROR, "explain failed\n").into_response();
    };
    let answer_judged = is_name;
    let view = (state.gateway)
        .with_policy(|policy| ExplainView::of(policy, client, &explanation, answer_judged));
    axum::Json(view).into_response()
}
