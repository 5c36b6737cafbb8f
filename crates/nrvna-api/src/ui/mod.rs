//! The web dashboard at `/ui`: pages (Overview, Jobs, a job, Batches,
//! Submit) drawn by one script with plain DOM calls (text is only ever
//! set as text), their data endpoints under `/ui/api/`, and the login
//! that turns the API key into a session cookie. Assets are compiled into
//! the binary (no CDN); every answer carries a strict Content-Security-Policy.
//!
//! Access (checked in `guard`): with an API key, a session from the login
//! form; without one (loopback only), none. POSTs also need the page's own
//! Origin.

pub mod api;
pub mod feed;
pub mod index;
pub mod sampler;
pub mod session;

use std::sync::Arc;

use axum::extract::State as AxState;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use nrvna_core::Workspace;

use crate::error::ApiError;
use crate::App;

/// What the dashboard keeps: the job index, the chart samples, the logins.
pub struct Ui {
    pub index: index::Index,
    pub sampler: Arc<sampler::Sampler>,
    pub sessions: session::Sessions,
    activity: Arc<sampler::Activity>,
}

impl Ui {
    /// The index of `ws` (listed now, details read in the background).
    pub fn open(ws: &Workspace) -> std::io::Result<Arc<Ui>> {
        let activity = Arc::new(sampler::Activity::default());
        Ok(Arc::new(Ui {
            index: index::Index::start(ws, activity.clone())?,
            sampler: Arc::new(sampler::Sampler::default()),
            sessions: session::Sessions::default(),
            activity,
        }))
    }

    /// Starts taking the charts' samples (needs the runtime).
    pub fn start(&self, ws: Workspace) {
        self.sampler.spawn(ws, self.activity.clone());
    }
}

const SHELL: &str = include_str!("assets/shell.html");
const LOGIN: &str = include_str!("assets/login.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");
const ICON: &str = include_str!("assets/icon.svg");

/// Sent with every /ui answer.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; \
                   media-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// The routes under /ui (the guard has checked access already).
pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/ui", get(page))
        .route("/ui/", get(page))
        .route("/ui/jobs", get(page))
        .route("/ui/job/{id}", get(page))
        .route("/ui/batches", get(page))
        .route("/ui/submit", get(page))
        .route("/ui/login", get(login_form).post(login))
        .route("/ui/logout", post(logout))
        .route(
            "/ui/assets/app.js",
            get(|| asset("text/javascript; charset=utf-8", APP_JS)),
        )
        .route("/ui/assets/app.css", get(|| asset("text/css; charset=utf-8", APP_CSS)))
        .route("/ui/assets/icon.svg", get(|| asset("image/svg+xml", ICON)))
        .route("/ui/api/overview", get(feed::overview_once))
        .route("/ui/api/events", get(feed::events))
        .route("/ui/api/jobs", get(api::jobs))
        .route("/ui/api/job/{id}", get(api::job))
        .route("/ui/api/job/{id}/events", get(feed::job_events))
        .route("/ui/api/job/{id}/image/{name}", get(api::image))
        .route("/ui/api/job/{id}/audio", get(api::audio))
        .route("/ui/api/job/{id}/cancel", post(api::cancel))
        .route("/ui/api/job/{id}/resubmit", post(api::resubmit))
        .route("/ui/api/submit", post(api::submit))
        .route("/ui/api/batches", get(api::batches))
        .route("/ui/api/files/{id}", get(api::file))
        .route("/ui/api/tag/{tag}", get(api::tag_file))
        .layer(middleware::map_response(secure_headers))
}

async fn secure_headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // Not no-referrer: under it a browser sends `Origin: null` even on the
    // dashboard's own POSTs, which the guard then refuses.
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    r
}

fn html(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response()
}

async fn asset(ct: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, ct), (header::CACHE_CONTROL, "no-cache")], body).into_response()
}

/// Every page is the same shell; the script draws the one the path names.
async fn page(AxState(app): AxState<Arc<App>>) -> Response {
    let logout = if app.cfg.api_key.is_some() { "" } else { " hidden" };
    html(StatusCode::OK, SHELL.replace("{{logout}}", logout))
}

/// `/`: a browser (it accepts text/html) is sent to the dashboard; any
/// other client gets what it got before the dashboard existed.
pub async fn root(headers: HeaderMap) -> Response {
    if crate::guard::accepts_html(&headers) {
        return Redirect::to("/ui").into_response();
    }
    ApiError::not_found("no such endpoint; see nrvna-api --help for the endpoints served").into_response()
}

/// The login form, with a fixed error line or none.
fn login_page(status: StatusCode, error: &str) -> Response {
    html(status, LOGIN.replace("{{error}}", error))
}

async fn login_form(AxState(app): AxState<Arc<App>>) -> Response {
    if app.cfg.api_key.is_none() {
        // Nothing to log into: loopback only, no key.
        return Redirect::to("/ui").into_response();
    }
    login_page(StatusCode::OK, "")
}

/// `POST /ui/login` (a form: `key=...`): the right key gets a session
/// cookie and goes to the overview; a wrong one gets the form again with
/// the reason and no cookie (200, as login forms answer: an error status
/// would put a console error in the browser for an ordinary typo).
async fn login(AxState(app): AxState<Arc<App>>, body: axum::body::Bytes) -> Response {
    let Some(want) = &app.cfg.api_key else {
        return Redirect::to("/ui").into_response();
    };
    let given = form_value(&body, "key").unwrap_or_default();
    if !crate::guard::same_secret(given.as_bytes(), want.as_bytes()) {
        tracing::info!("dashboard: a login with a wrong key was refused");
        return login_page(
            StatusCode::OK,
            "That key is not the gateway's API key (NRVNA_API_KEY). Try again.",
        );
    }
    match app.ui.sessions.create() {
        Ok(token) => (
            StatusCode::SEE_OTHER,
            [
                (header::SET_COOKIE, session::set_cookie(&token)),
                (header::LOCATION, "/ui".to_owned()),
            ],
        )
            .into_response(),
        Err(e) => {
            ApiError::internal(format!("creating a dashboard session (reading /dev/urandom): {e}")).into_response()
        }
    }
}

async fn logout(AxState(app): AxState<Arc<App>>, headers: HeaderMap) -> Response {
    app.ui.sessions.end(&headers);
    (
        StatusCode::SEE_OTHER,
        [
            (header::SET_COOKIE, session::clear_cookie()),
            (header::LOCATION, "/ui/login".to_owned()),
        ],
    )
        .into_response()
}

/// One value of an `application/x-www-form-urlencoded` body.
fn form_value(body: &[u8], name: &str) -> Option<String> {
    body.split(|b| *b == b'&').find_map(|kv| {
        let (k, v) = match kv.iter().position(|b| *b == b'=') {
            Some(i) => (&kv[..i], &kv[i + 1..]),
            None => (kv, &[][..]),
        };
        (url_decode(k)? == name).then(|| url_decode(v)).flatten()
    })
}

/// Decodes `+` and `%XX`; `None` for a bad escape or bytes that are not UTF-8.
fn url_decode(s: &[u8]) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = std::str::from_utf8(s.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_values_are_decoded() {
        assert_eq!(
            form_value(b"a=1&key=te%73t+k%2Bey", "key").as_deref(),
            Some("test k+ey")
        );
        assert_eq!(form_value(b"key=", "key").as_deref(), Some(""));
        assert_eq!(form_value(b"key=%zz", "key"), None);
        assert_eq!(form_value(b"other=1", "key"), None);
    }

    #[test]
    fn scripts_never_insert_html() {
        for bad in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
        ] {
            assert!(!APP_JS.contains(bad), "app.js uses {bad}");
        }
        assert!(
            !SHELL.contains("<script>") && !SHELL.contains("style="),
            "no inline script or style"
        );
    }
}
