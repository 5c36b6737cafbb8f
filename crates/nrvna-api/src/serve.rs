//! The accept loop (hyper-util, HTTP/1.1): a header read timeout, a body
//! read timeout (408, then the connection is closed), a cap on open
//! connections, and a graceful stop on SIGINT/SIGTERM. A client that
//! half-closes or disconnects while its request runs drops that request's
//! future, so its jobs' cancel guard cancels them.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use axum::body::Body;
use axum::http::{header, HeaderValue, Request, Response, StatusCode};
use axum::response::IntoResponse;
use axum::Router;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt;

use crate::error::ApiError;

/// Descriptors kept for other than connections.
const FILES_KEPT: u64 = 64;

/// How long open requests get after the stop signal.
const GRACE: Duration = Duration::from_secs(5);

/// The limits each connection is served with.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub max_body: usize,
    pub max_connections: usize,
}

/// Serves the router until SIGINT/SIGTERM; then stops accepting and gives
/// open requests 5 s.
pub async fn serve(listener: TcpListener, router: Router, limits: Limits) -> Result<()> {
    // Connections stop being accepted before descriptors run out (the
    // workspace, the watcher and the jobs' files need some too).
    let max_connections = match raise_open_files_limit() {
        Some(files) if files.saturating_sub(FILES_KEPT) < limits.max_connections as u64 => {
            let max = files.saturating_sub(FILES_KEPT).max(1) as usize;
            tracing::warn!(
                "only {files} open files are allowed (ulimit -n), so at most {max} connections are served at \
                 once, not {}; raise the hard limit to serve more",
                limits.max_connections
            );
            max
        }
        _ => limits.max_connections,
    };
    let slots = Arc::new(Semaphore::new(max_connections));
    let graceful = GracefulShutdown::new();
    let stop = shutdown_signal();
    tokio::pin!(stop);
    loop {
        let slot = tokio::select! {
            s = slots.clone().acquire_owned() => s?,
            () = &mut stop => break,
        };
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors (EMFILE) and the like: the
                    // server goes on once some close.
                    tracing::warn!("accepting a connection: {e}; trying again in 100 ms");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        // Streamed events are small writes: without TCP_NODELAY each waits
        // for the client's delayed ACK (about 40 ms) behind the one before.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!("TCP_NODELAY on an accepted connection: {e}");
        }
        let router = router.clone();
        let service = hyper::service::service_fn(move |req| read_then_route(router.clone(), req, limits));
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("connection ended: {e}");
            }
            drop(slot);
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        // Streams that never end must not hold the exit forever.
        () = tokio::time::sleep(GRACE) => {
            tracing::warn!("requests still open {} s after the stop signal; exiting anyway", GRACE.as_secs());
        }
    }
    Ok(())
}

/// Reads the whole body within the body timeout (and the size limit), then
/// hands the request to the router. Dropped, with the router's future, when
/// the connection ends.
async fn read_then_route(router: Router, req: Request<Incoming>, limits: Limits) -> Result<Response<Body>, Infallible> {
    let (parts, body) = req.into_parts();
    let read = tokio::time::timeout(limits.body_timeout, Limited::new(body, limits.max_body).collect()).await;
    let bytes = match read {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.is::<LengthLimitError>() => {
            return Ok(closing(
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "invalid_request_error",
                    format!(
                        "the request body is larger than {} bytes (--max-body / NRVNA_API_MAX_BODY)",
                        limits.max_body
                    ),
                )
                .code("request_too_large"),
            ))
        }
        Ok(Err(e)) => {
            return Ok(closing(ApiError::invalid(format!(
                "reading the request body failed: {e}; send the body again"
            ))))
        }
        Err(_) => {
            return Ok(closing(
                ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "invalid_request_error",
                    format!(
                        "the request body was not complete within {} s of its headers, so the connection is \
                         closed; send the whole body at once (or raise --body-timeout / NRVNA_API_BODY_TIMEOUT)",
                        limits.body_timeout.as_secs_f64()
                    ),
                )
                .code("request_timeout"),
            ))
        }
    };
    let req = Request::from_parts(parts, Body::from(bytes));
    Ok(router.oneshot(req).await.unwrap_or_else(|e: Infallible| match e {}))
}

/// The error, and the connection closed after it (the rest of the body is
/// never read).
fn closing(e: ApiError) -> Response<Body> {
    let mut r = e.into_response();
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

/// Raises the soft limit on open files to the hard one, so that the
/// connection cap, not the descriptor limit, decides who waits; returns the
/// limit now in force.
fn raise_open_files_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return None;
        }
        if lim.rlim_cur < lim.rlim_max {
            let old = lim.rlim_cur;
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 {
                tracing::debug!("open files limit raised from {old} to {}", lim.rlim_max);
            } else {
                lim.rlim_cur = old;
            }
        }
    }
    Some(lim.rlim_cur)
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
    tracing::info!("stopping: no new connections; open requests get {} s", GRACE.as_secs());
}
