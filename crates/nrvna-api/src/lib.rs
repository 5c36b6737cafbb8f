//! `nrvna-api`: an OpenAI-compatible HTTP gateway and an MCP server over an
//! nrvna workspace. It speaks the workspace contract only (like `wrk` and
//! `flw`): every request becomes a job that any daemon serving the
//! workspace runs, and nothing a client submitted lives only in here.

pub mod batches;
pub mod config;
pub mod error;
pub mod jobs;
pub mod mcp;
pub mod openai;

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use axum::extract::{DefaultBodyLimit, Request, State as AxState};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use nrvna_core::Workspace;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::ServiceExt;

pub use config::{Args, Config};
use error::ApiError;

/// What every handler shares: the configuration, the workspace's jobs and
/// the gateway's own durable records.
pub struct App {
    pub cfg: Config,
    pub jobs: jobs::Jobs,
    pub store: batches::Store,
}

impl App {
    pub fn open(cfg: Config) -> Result<Arc<App>> {
        let ws = Workspace::create(&cfg.workspace)
            .with_context(|| {
                format!(
                    "opening workspace {}; check that the path is a directory you can write to",
                    cfg.workspace.display()
                )
            })?
            .with_settings(cfg.settings.clone());
        let store = batches::Store::open(&ws)
            .with_context(|| format!("creating {}/api/ for batches and files", ws.root().display()))?;
        Ok(Arc::new(App {
            jobs: jobs::Jobs::new(ws),
            store,
            cfg,
        }))
    }
}

/// The HTTP routes, behind the bearer-token check and the body limit.
pub fn router(app: Arc<App>) -> Router {
    let mcp_app = app.clone();
    let mut mcp_cfg = StreamableHttpServerConfig::default();
    if !app.cfg.listen.ip().is_loopback() {
        // Beyond loopback the bearer token guards /mcp; the SDK's Host
        // check (against DNS rebinding of loopback servers) would refuse
        // every remote client.
        mcp_cfg = mcp_cfg.disable_allowed_hosts();
    }
    let mcp = StreamableHttpService::new(
        move || Ok(mcp::NrvnaMcp::new(mcp_app.clone())),
        Arc::new(LocalSessionManager::default()),
        mcp_cfg,
    );
    Router::new()
        .route("/v1/chat/completions", post(openai::chat))
        .route("/v1/completions", post(openai::completions))
        .route("/v1/embeddings", post(openai::embeddings))
        .route("/v1/models", get(openai::models))
        .route("/v1/files", post(batches::upload))
        .route("/v1/files/{id}", get(batches::file))
        .route("/v1/files/{id}/content", get(batches::content))
        .route("/v1/batches", post(batches::create).get(batches::list))
        .route("/v1/batches/{id}", get(batches::get))
        .route("/v1/batches/{id}/cancel", post(batches::cancel))
        .nest_service("/mcp", mcp)
        .fallback(|| async { ApiError::not_found("no such endpoint; see nrvna-api --help for the endpoints served") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "invalid_request_error",
                "this method is not allowed on this endpoint",
            )
        })
        .layer(middleware::from_fn_with_state(app.clone(), auth))
        .layer(DefaultBodyLimit::max(app.cfg.max_body))
        .with_state(app)
}

/// `Authorization: Bearer KEY` when a key is configured.
async fn auth(AxState(app): AxState<Arc<App>>, req: Request, next: Next) -> Response {
    if let Some(key) = &app.cfg.api_key {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !same(given.as_bytes(), key.as_bytes()) {
            return ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_request_error",
                "missing or incorrect API key: send `Authorization: Bearer KEY` with the key in NRVNA_API_KEY",
            )
            .code("invalid_api_key")
            .into_response();
        }
    }
    next.run(req).await
}

/// Compares without stopping at the first difference.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Runs the gateway (or the stdio MCP server) until SIGINT/SIGTERM.
pub async fn run(cfg: Config) -> Result<()> {
    let app = App::open(cfg)?;
    batches::start(app.clone()).context("starting the background work on batches")?;
    if app.cfg.mcp {
        tracing::info!("serving MCP on stdin/stdout for {}", app.jobs.ws.root().display());
        let service = mcp::NrvnaMcp::new(app.clone())
            .serve(rmcp::transport::stdio())
            .await
            .context("starting the MCP server on stdin/stdout")?;
        service.waiting().await.context("serving MCP on stdin/stdout")?;
        return Ok(());
    }
    let listener = tokio::net::TcpListener::bind(app.cfg.listen).await.with_context(|| {
        format!(
            "listening on {}; is another server using it? pick another with --listen",
            app.cfg.listen
        )
    })?;
    let addr = listener.local_addr()?;
    {
        // Whoever started us may not read stdout (a closed pipe): serve anyway.
        let mut out = std::io::stdout().lock();
        if let Err(e) = writeln!(out, "http://{addr}").and_then(|()| out.flush()) {
            tracing::debug!("could not print the address on stdout: {e}");
        }
    }
    tracing::info!("serving {} on http://{addr}", app.jobs.ws.root().display());
    let router = router(app);
    let server = axum::serve(listener, router).with_graceful_shutdown(shutdown_signal());
    tokio::select! {
        r = server => r.context("serving HTTP")?,
        // Streams that never end must not hold the exit forever.
        _ = async { shutdown_signal().await; tokio::time::sleep(Duration::from_secs(5)).await } => {
            tracing::warn!("requests still open 5 s after the stop signal; exiting anyway");
        }
    }
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("stopping: no new connections; open requests get 5 s");
}
