//! Who may drive the gateway, checked before any route runs: the bearer
//! key when one is set; without one (loopback only) a loopback `Host` and
//! no cross-site `Origin`, so that a web page cannot drive it even with DNS
//! rebinding. Always: JSON endpoints take `application/json` only, and no
//! CORS is granted (preflights are refused).
//!
//! The dashboard (`/ui`, and `/` asked for by a browser) has its own rule,
//! at the end of this file: a session cookie from its login form instead
//! of the bearer key, and its own Origin on every POST.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{Request, State as AxState};
use axum::http::uri::Authority;
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;
use crate::App;

/// The endpoints whose POST body is JSON (a batch's cancel takes none;
/// uploads are multipart; /mcp checks its own).
const JSON_ENDPOINTS: [&str; 6] = [
    "/v1/chat/completions",
    "/v1/audio/speech",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/batches",
    "/v1/responses",
];

/// The middleware: the first check a request fails answers it.
pub async fn check(AxState(app): AxState<Arc<App>>, req: Request, next: Next) -> Response {
    let verdict = if req.method() == Method::OPTIONS {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "invalid_request_error",
            "nrvna-api grants no CORS, so OPTIONS (a browser's preflight) is refused: call it from a program, \
             not from a web page",
        )
        .code("cors_refused"))
    } else if for_dashboard(&req) {
        return match dashboard(&app, &req) {
            None => next.run(req).await,
            Some(refused) => refused,
        };
    } else {
        // `--metrics-public`: a Prometheus that holds no key scrapes /metrics.
        let public = app.cfg.metrics_public && req.uri().path() == "/metrics";
        match &app.cfg.api_key {
            Some(_) if public => Ok(()),
            Some(key) => bearer(req.headers(), key),
            None => loopback_only(req.headers(), req.uri()),
        }
        .and_then(|()| json_body(&req))
    };
    match verdict {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

/// `Authorization: Bearer KEY`; the scheme in any case, blanks around the
/// token tolerated (RFC 7235: `1*SP` between scheme and token).
fn bearer(headers: &HeaderMap, key: &str) -> Result<(), ApiError> {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .unwrap_or("");
    if same(given.as_bytes(), key.as_bytes()) {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::UNAUTHORIZED,
        "invalid_request_error",
        "missing or incorrect API key: send `Authorization: Bearer KEY` with the key in NRVNA_API_KEY",
    )
    .code("invalid_api_key"))
}

/// Compares without stopping at the first difference.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Without a key: the request names a loopback host, and no other site's
/// page sent it.
fn loopback_only(headers: &HeaderMap, uri: &Uri) -> Result<(), ApiError> {
    let forbidden = |why: String, code| ApiError::new(StatusCode::FORBIDDEN, "invalid_request_error", why).code(code);
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    if host.is_none() && uri.authority().is_none() {
        return Err(forbidden(
            "the request has no Host header; without an API key nrvna-api serves only requests addressed to \
             a loopback host (localhost, 127.0.0.1, [::1])"
                .into(),
            "forbidden_host",
        ));
    }
    for name in host.into_iter().chain(uri.authority().map(Authority::as_str)) {
        if !name.parse::<Authority>().is_ok_and(|a| is_loopback(a.host())) {
            return Err(forbidden(
                format!(
                    "Host {name:?} is not a loopback name or address; without an API key nrvna-api serves only \
                     requests addressed to localhost, 127.0.0.1 or [::1] (to serve other names, set \
                     NRVNA_API_KEY)"
                ),
                "forbidden_host",
            ));
        }
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let loopback = origin
            .to_str()
            .ok()
            .and_then(|o| o.parse::<Uri>().ok())
            .is_some_and(|u| matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some_and(is_loopback));
        if !loopback {
            return Err(forbidden(
                format!(
                    "requests from the web page at Origin {origin:?} are refused: without an API key nrvna-api \
                     serves programs on this machine only (set NRVNA_API_KEY and send it to allow others)"
                ),
                "cross_origin",
            ));
        }
    }
    if headers
        .get("sec-fetch-site")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"cross-site"))
    {
        return Err(forbidden(
            "a cross-site request (Sec-Fetch-Site: cross-site) is refused: without an API key nrvna-api serves \
             programs on this machine only"
                .into(),
            "cross_origin",
        ));
    }
    Ok(())
}

/// `localhost`, 127.0.0.0/8 or ::1 (also as ::ffff:127.x.y.z). Names under
/// `.localhost` are not taken: not every resolver keeps them on loopback.
fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V6(v6)) => v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
        Ok(ip) => ip.is_loopback(),
        Err(_) => false,
    }
}

/// POST to a JSON endpoint: `Content-Type: application/json` (parameters
/// such as `charset` allowed). A form or `text/plain` is what a web page
/// can send without a preflight.
fn json_body(req: &Request) -> Result<(), ApiError> {
    if req.method() != Method::POST || !JSON_ENDPOINTS.contains(&req.uri().path()) {
        return Ok(());
    }
    let ct = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    let json = ct.is_some_and(|ct| {
        ct.split(';')
            .next()
            .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
    });
    if json {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "invalid_request_error",
        format!(
            "{} takes a JSON body: send `Content-Type: application/json` (got {})",
            req.uri().path(),
            ct.map_or("no Content-Type".to_owned(), |c| format!("{c:?}"))
        ),
    )
    .code("unsupported_media_type"))
}

// ---- The dashboard (/ui): a login session instead of the bearer key ----

/// Requests for the dashboard: /ui and below, and `/` from a browser.
fn for_dashboard(req: &Request) -> bool {
    let p = req.uri().path();
    p == "/ui" || p.starts_with("/ui/") || (p == "/" && accepts_html(req.headers()))
}

/// Whether the request's Accept names text/html (what browsers send for
/// a page).
pub fn accepts_html(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',')
                .any(|t| t.trim().to_ascii_lowercase().starts_with("text/html"))
        })
}

/// The login form and the assets it uses need no session.
fn open_to_all(path: &str) -> bool {
    path == "/ui/login" || path.starts_with("/ui/assets/")
}

/// With a key: a live session (else the login form, or 401 for data);
/// without one: the loopback rule of the API. POSTs (login, logout,
/// cancel, resubmit, submit) must also come from the dashboard's own
/// pages (the cookie is `SameSite=Strict` too). `None`: let it through;
/// else the answer that refuses it.
fn dashboard(app: &App, req: &Request) -> Option<Response> {
    let path = req.uri().path();
    if req.method() == Method::POST {
        if let Err(e) = same_origin(req.headers()) {
            return Some(e.into_response());
        }
    }
    match &app.cfg.api_key {
        None => loopback_only(req.headers(), req.uri())
            .err()
            .map(IntoResponse::into_response),
        Some(_) if open_to_all(path) || app.ui.sessions.valid(req.headers()) => None,
        Some(_) if path.starts_with("/ui/api/") => Some(
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_request_error",
                "the dashboard's session is missing or expired: log in again at /ui/login",
            )
            .code("invalid_session")
            .into_response(),
        ),
        Some(_) => Some(axum::response::Redirect::to("/ui/login").into_response()),
    }
}

/// `Origin` is present and names the host the request was sent to.
fn same_origin(headers: &HeaderMap) -> Result<(), ApiError> {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let origin = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok());
    let same = match (host, origin) {
        (Some(host), Some(origin)) => origin.parse::<Uri>().ok().is_some_and(|u| {
            matches!(u.scheme_str(), Some("http" | "https"))
                && u.authority().is_some_and(|a| a.as_str().eq_ignore_ascii_case(host))
        }),
        _ => false,
    };
    if same {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        "invalid_request_error",
        format!(
            "the dashboard takes POSTs from its own pages only: Origin {origin:?} is not this gateway ({host:?}); \
             use the dashboard's buttons, or the API with the key"
        ),
    )
    .code("cross_origin"))
}

/// The login form's key check (constant time, like the bearer's).
pub fn same_secret(a: &[u8], b: &[u8]) -> bool {
    same(a, b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_names() {
        for ok in [
            "localhost",
            "LocalHost",
            "127.0.0.1",
            "127.9.8.7",
            "[::1]",
            "::1",
            "[::ffff:127.0.0.1]",
        ] {
            assert!(is_loopback(ok), "{ok}");
        }
        for no in [
            "example.com",
            "localhost.example.com",
            "a.localhost",
            "10.0.0.1",
            "0.0.0.0",
            "[::2]",
            "",
        ] {
            assert!(!is_loopback(no), "{no}");
        }
    }

    #[test]
    fn bearer_scheme_in_any_case() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::AUTHORIZATION, v.parse().unwrap());
            m
        };
        for ok in ["Bearer k", "bearer k", "BEARER k", "Bearer   k", " bearer k "] {
            assert!(bearer(&h(ok), "k").is_ok(), "{ok:?}");
        }
        for no in ["Basic k", "Bearer", "Bearerk", "Bearer kk", "k"] {
            assert!(bearer(&h(no), "k").is_err(), "{no:?}");
        }
    }

    #[test]
    fn only_html_accepting_clients_are_browsers() {
        let mut h = HeaderMap::new();
        assert!(!accepts_html(&h));
        h.insert(header::ACCEPT, "application/json".parse().unwrap());
        assert!(!accepts_html(&h));
        h.insert(
            header::ACCEPT,
            "text/html,application/xhtml+xml,*/*;q=0.8".parse().unwrap(),
        );
        assert!(accepts_html(&h));
    }

    #[test]
    fn dashboard_posts_need_their_own_origin() {
        let h = |host: &str, origin: Option<&str>| {
            let mut m = HeaderMap::new();
            m.insert(header::HOST, host.parse().unwrap());
            if let Some(o) = origin {
                m.insert(header::ORIGIN, o.parse().unwrap());
            }
            m
        };
        assert!(same_origin(&h("127.0.0.1:8080", Some("http://127.0.0.1:8080"))).is_ok());
        for (host, origin) in [
            ("127.0.0.1:8080", None),
            ("127.0.0.1:8080", Some("http://127.0.0.1:9090")),
            ("127.0.0.1:8080", Some("http://evil.example")),
            ("127.0.0.1:8080", Some("null")),
        ] {
            assert!(same_origin(&h(host, origin)).is_err(), "{origin:?}");
        }
    }
}
