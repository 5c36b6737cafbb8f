//! MCP over streamable HTTP at `/mcp`, and the life of its sessions: each
//! closes after an idle time (rmcp's keep-alive), at most a fixed number
//! are open (a new `initialize` beyond gets 503), and the memory that
//! closed sessions held goes back to the system.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State as AxState};
use axum::http::{Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};

use crate::error::ApiError;
use crate::App;

/// The header that names an existing session.
const SESSION_HEADER: &str = "mcp-session-id";

/// How often closed sessions' memory is handed back.
const TRIM_EVERY: Duration = Duration::from_secs(5);

/// The open sessions and their cap.
#[derive(Clone)]
pub struct Sessions {
    manager: Arc<LocalSessionManager>,
    max: usize,
}

impl Sessions {
    pub fn new(idle: Duration, max: usize) -> Sessions {
        let mut manager = LocalSessionManager::default();
        // Once idle this long, a session's worker quits and the service
        // removes it from the manager.
        manager.session_config.keep_alive = Some(idle);
        Sessions {
            manager: Arc::new(manager),
            max,
        }
    }

    pub async fn open(&self) -> usize {
        self.manager.sessions.read().await.len()
    }

    /// The `/mcp` service. The `Host` check is the gateway's own (guard),
    /// the same on every route, so the SDK's is off.
    pub fn service(&self, app: Arc<App>) -> Router {
        let mcp = StreamableHttpService::new(
            move || Ok(crate::mcp::NrvnaMcp::new(app.clone())),
            self.manager.clone(),
            StreamableHttpServerConfig::default().disable_allowed_hosts(),
        );
        Router::new()
            .fallback_service(mcp)
            .layer(middleware::from_fn_with_state(self.clone(), cap))
    }

    /// Hands the memory of closed sessions back to the system (glibc keeps
    /// freed memory in its arenas otherwise: 10,000 sessions left ~500 MB).
    pub async fn trim_when_closed(self) {
        let mut before = 0;
        loop {
            tokio::time::sleep(TRIM_EVERY).await;
            let now = self.open().await;
            if now < before {
                release_freed_memory();
            }
            before = now;
        }
    }
}

/// A new session (a POST without a session id) beyond the cap gets 503.
async fn cap(AxState(sessions): AxState<Sessions>, req: Request, next: Next) -> Response {
    let new = req.method() == Method::POST && !req.headers().contains_key(SESSION_HEADER);
    if new && sessions.open().await >= sessions.max {
        tracing::warn!(
            "refusing a new MCP session: {} are open (--mcp-max-sessions)",
            sessions.max
        );
        let e = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            format!(
                "{} MCP sessions are open, the most allowed (--mcp-max-sessions): end finished ones with DELETE \
                 /mcp, or try again once idle ones expire",
                sessions.max
            ),
        )
        .code("too_many_sessions");
        // Not a fault of ours: answered without ApiError's error log.
        return (e.status, Json(e.body())).into_response();
    }
    next.run(req).await
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn release_freed_memory() {
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release_freed_memory() {}
