//! Who may change what: mutating endpoints need the bearer token of `[admin] token_file`
//! (without one, only a loopback listener serves them), and every request is held to
//! `[admin] max_body_bytes` and `request_timeout_ms`.

use std::net::IpAddr;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::views::ErrorView;
use crate::config::AdminToken;

/// Why a mutating request may not go ahead, if it may not.
pub(super) fn refuse_mutation(state: &AppState, headers: &HeaderMap) -> Option<Response> {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let refusal = state.gateway.with_policy(|policy| {
        let token = policy.config().admin_token.as_ref();
        mutation_refused(token, state.admin.ip(), authorization)
    })?;
    let body = axum::Json(ErrorView::new(refusal.message()));
    Some(match refusal {
        Refusal::NoTokenOffLoopback => (StatusCode::FORBIDDEN, body).into_response(),
        Refusal::BadToken => (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer realm=\"portvakt\"")],
            body,
        )
            .into_response(),
    })
}

#[derive(Debug, PartialEq, Eq)]
enum Refusal {
    /// 403: no token file, and the listener is reachable from other hosts.
    NoTokenOffLoopback,
    /// 401: a token is set and the request does not carry it.
    BadToken,
}

impl Refusal {
    fn message(&self) -> &'static str {
        match self {
            Refusal::NoTokenOffLoopback => {
                "mutating endpoints need [admin] token_file when the admin listener is not on loopback"
            }
            Refusal::BadToken => "a valid `Authorization: Bearer <token>` header is required",
        }
    }
}

/// The rule for mutating endpoints: with a token, the request must carry it; without one,
/// only a loopback listener serves them.
fn mutation_refused(
    token: Option<&AdminToken>,
    listener: IpAddr,
    authorization: Option<&str>,
) -> Option<Refusal> {
    let Some(token) = token else {
        return (!listener.is_loopback()).then_some(Refusal::NoTokenOffLoopback);
    };
    match authorization.and_then(|v| v.strip_prefix("Bearer ")) {
        Some(offered) if token.matches(offered.trim()) => None,
        _ => Some(Refusal::BadToken),
    }
}

/// Every admin request: its declared body within `[admin] max_body_bytes` (413 unread past
/// it: no endpoint reads a body), its handling within `request_timeout_ms` (503 past it).
/// Each refusal is counted in `portvakt_admin_limit_hits_total{limit}`.
pub(super) async fn guard(
    State(state): State<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let hits = &state.gateway.metrics().admin_limit_hits;
    let limits = state.gateway.with_policy(|p| p.config().admin_limits);
    let declared = (request.headers().get(axum::http::header::CONTENT_LENGTH))
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limits.max_body) {
        hits.with_label_values(&["body"]).inc();
        return (StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n").into_response();
    }
    match tokio::time::timeout(limits.timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            hits.with_label_values(&["time"]).inc();
            (StatusCode::SERVICE_UNAVAILABLE, "request timed out\n").into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutations_need_the_token_or_a_loopback_listener() {
        let token = AdminToken::new("s3cret");
        let (lo, any): (IpAddr, IpAddr) =
            ("127.0.0.1".parse().unwrap(), "0.0.0.0".parse().unwrap());
        assert_eq!(mutation_refused(None, lo, None), None);
        assert_eq!(mutation_refused(None, "::1".parse().unwrap(), None), None);
        assert_eq!(
            mutation_refused(None, any, Some("Bearer s3cret")),
            Some(Refusal::NoTokenOffLoopback)
        );
        for (listener, header) in [(lo, None), (any, Some("Bearer nope")), (lo, Some("s3cret"))] {
            assert_eq!(
                mutation_refused(Some(&token), listener, header),
                Some(Refusal::BadToken),
                "{header:?}"
            );
        }
        assert_eq!(
            mutation_refused(Some(&token), any, Some("Bearer s3cret")),
            None
        );
    }
}
