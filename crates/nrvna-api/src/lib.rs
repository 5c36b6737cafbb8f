//! `nrvna-api`: an OpenAI-compatible HTTP gateway and an MCP server over an
//! nrvna workspace. It speaks the workspace contract only (like `wrk` and
//! `flw`): every request becomes a job that any daemon serving the
//! workspace runs, and nothing a client submitted lives only in here.

pub mod audio;
pub mod batches;
pub mod config;
pub mod error;
pub mod guard;
pub mod jobs;
pub mod mcp;
pub mod metrics;
pub mod openai;
pub mod responses;
pub mod serve;
pub mod sessions;
pub mod ui;

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::middleware;
use axum::routing::{delete, get, post};
use axum::Router;
use nrvna_core::{State, Workspace};
use rmcp::ServiceExt;

pub use config::{Args, Config};
use error::ApiError;

/// What every handler shares: the configuration, the workspace's jobs and
/// the gateway's own durable records.
pub struct App {
    pub cfg: Config,
    pub jobs: jobs::Jobs,
    pub store: batches::Store,
    /// What `/metrics` reports: requests, and the workspace's jobs by state.
    pub metrics: Arc<metrics::Metrics>,
    /// The dashboard's job index, chart samples and login sessions.
    pub ui: Arc<ui::Ui>,
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
        let metrics = metrics::Metrics::new(&ws)
            .with_context(|| format!("watching {} for the job counts of /metrics", ws.root().display()))?;
        let ui =
            ui::Ui::open(&ws).with_context(|| format!("indexing {} for the dashboard at /ui", ws.root().display()))?;
        Ok(Arc::new(App {
            ui,
            jobs: jobs::Jobs::new(ws),
            store,
            metrics,
            cfg,
        }))
    }
}

/// The HTTP routes, behind the request checks (guard) and the body limit;
/// `/mcp` with its sessions.
pub fn router(app: Arc<App>, sessions: &sessions::Sessions) -> Router {
    let scrape = app.metrics.clone();
    Router::new()
        .route("/metrics", get(move || metrics::exposition(scrape.clone())))
        .route("/v1/chat/completions", post(openai::chat))
        .route("/v1/completions", post(openai::completions))
        .route("/v1/embeddings", post(openai::embeddings))
        .route("/v1/models", get(openai::models))
        .route("/v1/audio/transcriptions", post(audio::transcriptions))
        .route("/v1/audio/speech", post(audio::speech))
        .route("/v1/files", post(batches::upload).get(batches::list_files))
        .route("/v1/files/{id}", get(batches::file).merge(delete(batches::delete_file)))
        .route("/v1/files/{id}/content", get(batches::content))
        .route("/v1/batches", post(batches::create).get(batches::list))
        .route("/v1/batches/{id}", get(batches::get))
        .route("/v1/batches/{id}/cancel", post(batches::cancel))
        .route("/v1/responses", post(responses::create))
        .route(
            "/v1/responses/{id}",
            get(responses::retrieve).merge(delete(responses::delete)),
        )
        .route("/v1/responses/{id}/cancel", post(responses::cancel))
        .route("/v1/responses/{id}/input_items", get(responses::input_items))
        .nest_service("/mcp", sessions.service(app.clone()))
        .route("/", get(ui::root))
        .merge(ui::routes())
        .fallback(|| async { ApiError::not_found("no such endpoint; see nrvna-api --help for the endpoints served") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "invalid_request_error",
                "this method is not allowed on this endpoint",
            )
        })
        .layer(middleware::from_fn_with_state(app.clone(), guard::check))
        // Outside the guard, so that refused requests (401, 403, 415) count too.
        .layer(middleware::from_fn_with_state(app.metrics.clone(), metrics::track))
        .layer(DefaultBodyLimit::max(app.cfg.max_body))
        .with_state(app)
}

/// Refuses a workspace the gateway could not write: it creates and removes
/// a file in each directory it writes (jobs it publishes and cancels, and
/// its own records under api/), instead of starting and answering 500s.
fn check_writable(ws: &Workspace) -> Result<()> {
    let api = ws.root().join("api");
    let mut dirs = vec![
        ws.dir(State::Writing),
        ws.dir(State::Ready),
        ws.dir(State::Failed),
        api.clone(),
    ];
    if let Ok(entries) = std::fs::read_dir(&api) {
        dirs.extend(entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
    }
    for dir in dirs {
        let probe = dir.join(format!(".nrvna-api-probe.{}", std::process::id()));
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&probe)
            .and_then(|_| std::fs::remove_file(&probe));
        if let Err(e) = written {
            let rel = dir.strip_prefix(ws.root()).unwrap_or(Path::new("."));
            anyhow::bail!(
                "cannot write in the workspace's {}/ ({e}): nrvna-api publishes jobs and keeps records there; \
                 give the user running it write access to {} (or run it as the workspace's owner)",
                rel.display(),
                ws.root().display()
            );
        }
    }
    Ok(())
}

/// Runs the gateway (or the stdio MCP server) until SIGINT/SIGTERM.
pub async fn run(cfg: Config) -> Result<()> {
    let app = App::open(cfg)?;
    check_writable(&app.jobs.ws)?;
    error::redact_workspace(app.jobs.ws.root());
    batches::start(app.clone()).context("starting the background work on batches")?;
    app.ui.start(app.jobs.ws.clone());
    if let Some(hooks) = &app.cfg.webhooks {
        nrvna_hooks::start(&app.jobs.ws, hooks.clone()).context("starting webhook delivery")?;
    }
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
    let sessions = sessions::Sessions::new(app.cfg.mcp_session_idle, app.cfg.mcp_max_sessions);
    tokio::spawn(sessions.clone().trim_when_closed());
    let limits = serve::Limits {
        header_timeout: app.cfg.header_timeout,
        body_timeout: app.cfg.body_timeout,
        max_body: app.cfg.max_body,
        max_connections: app.cfg.max_connections,
    };
    serve::serve(listener, router(app, &sessions), limits)
        .await
        .context("serving HTTP")
}
