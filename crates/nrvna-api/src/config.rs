//! `nrvna-api`'s one configuration: clap derive over flags and environment
//! variables (flag over environment over default), built once in `main`
//! and handed down; nothing deeper reads the environment.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

const AFTER_HELP: &str = "\
Exit codes:
  0  stopped cleanly (SIGINT/SIGTERM, or the MCP client closed stdin)
  1  could not start (bad configuration, a key that is empty or not visible ASCII, address in use,
     no workspace, or a workspace it cannot write); the reason is on stderr

Once listening, the address is printed on stdout as one line (`http://ADDR`).

Endpoints (OpenAI-compatible, under /v1):
  POST /v1/chat/completions (image_url parts: data URIs)  POST /v1/completions
  POST /v1/embeddings  GET /v1/models
  POST /v1/audio/transcriptions (multipart; json|text)  POST /v1/audio/speech (wav)
  POST /v1/files  GET /v1/files  GET /v1/files/{id}  DELETE /v1/files/{id}
  GET /v1/files/{id}/content
  POST /v1/batches  GET /v1/batches  GET /v1/batches/{id}  POST /v1/batches/{id}/cancel
  POST /v1/responses (sync, stream, background)  GET /v1/responses/{id} (?stream=true&starting_after=N)
  POST /v1/responses/{id}/cancel  DELETE /v1/responses/{id}  GET /v1/responses/{id}/input_items
  /mcp  MCP (streamable HTTP)
  GET /metrics  Prometheus text (behind the key unless --metrics-public)

Webhooks (--webhook URL, NRVNA_WEBHOOK_SECRET=whsec_...): batch.completed|failed|cancelled|expired,
response.completed|failed|cancelled|incomplete (background responses) and job.done|failed (jobs
of `wrk --notify`), signed as Standard Webhooks (webhook-id, webhook-timestamp, webhook-signature),
kept in WS/.nrvna-webhooks/outbox/ until delivered (then sent/; out of retries: dead/).
Dashboard (a browser; `/` sends browsers there, other clients get what they got before):
  GET /ui  overview (live over SSE)   GET /ui/jobs  filterable list   GET /ui/job/{id}  one job
  GET /ui/batches   GET /ui/submit    GET|POST /ui/login   POST /ui/logout
  /ui/api/...  the pages' data (JSON, SSE), behind the same login
With an API key, the login form takes the key and sets a session cookie (HttpOnly,
SameSite=Strict, Path=/ui; not Secure, since the gateway speaks plain HTTP); the bearer key
does not open /ui, and the cookie opens nothing else. Without a key (loopback only) the
dashboard needs no login. Its POSTs must carry the gateway's own Origin.

Security (loopback without a key): every request's Host must be a loopback name or address
(localhost, 127.0.0.0/8, [::1], any port), and a request carrying a non-loopback Origin or
`Sec-Fetch-Site: cross-site` is refused (403), so a web page cannot drive the gateway, even with
DNS rebinding. Always: POST chat/completions/embeddings/audio/speech/batches/responses need
`Content-Type: application/json` (415 otherwise), no CORS is granted (OPTIONS is refused), a request's headers
must arrive within --header-timeout and its body within --body-timeout (408, then the connection
is closed), and error bodies name the workspace as `WS` (the full message goes to the log).

Examples:
  nrvnad SmolLM2-135M-Instruct.Q4_1 ws &  nrvna-api ws
  NRVNA_API_KEY=secret nrvna-api ws --listen 0.0.0.0:8080
  nrvna-api ws --mcp          # MCP on stdin/stdout";

/// Serve an nrvna workspace over an OpenAI-compatible HTTP API and MCP.
///
/// Every request becomes a job in WS (published like `wrk` does); any daemon
/// serving WS (nrvnad, or the C++ one) runs it. Nothing a client submitted
/// lives only in this process: batches, uploaded files and responses are kept in WS/api/.
#[derive(Debug, Parser)]
#[command(name = "nrvna-api", version, after_long_help = AFTER_HELP)]
pub struct Args {
    /// The workspace directory (created when missing).
    #[arg(value_name = "WS")]
    pub workspace: PathBuf,

    /// Address to listen on. Anything but loopback needs NRVNA_API_KEY.
    #[arg(long, env = "NRVNA_API_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Bearer token every request must carry (`Authorization: Bearer KEY`).
    /// Without it, only loopback addresses are allowed.
    #[arg(long = "api-key", env = "NRVNA_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,

    /// Serve MCP on stdin/stdout instead of HTTP.
    #[arg(long)]
    pub mcp: bool,

    /// Serve GET /metrics (Prometheus text) without the API key, for a
    /// Prometheus that holds none; every other endpoint keeps the key.
    #[arg(long, env = "NRVNA_API_METRICS_PUBLIC")]
    pub metrics_public: bool,

    /// Largest request body in bytes (uploads included).
    #[arg(long, env = "NRVNA_API_MAX_BODY", default_value_t = 64 * 1024 * 1024)]
    pub max_body: usize,

    /// Longest a synchronous request waits for its job, in seconds; the
    /// job is cancelled when it runs out.
    #[arg(long, env = "NRVNA_API_TIMEOUT", default_value_t = 600.0)]
    pub timeout: f64,

    /// Seconds a client has to send a request's headers (from the connection's
    /// start, or the end of its previous request); then the connection is closed.
    #[arg(long, env = "NRVNA_API_HEADER_TIMEOUT", default_value_t = 10.0)]
    pub header_timeout: f64,

    /// Seconds a client has to send a request's whole body, counted from the
    /// end of its headers (a total, not an idle time: a body that trickles
    /// in forever is cut too); then it gets 408 and the connection is closed.
    #[arg(long, env = "NRVNA_API_BODY_TIMEOUT", default_value_t = 30.0)]
    pub body_timeout: f64,

    /// Most connections open at once; beyond it new ones wait in the
    /// kernel's backlog until one closes. (At start the soft limit on open
    /// files is raised to the hard one.)
    #[arg(long, env = "NRVNA_API_MAX_CONNECTIONS", default_value_t = 1024)]
    pub max_connections: usize,

    /// Seconds an MCP session (at /mcp) may stay idle before it is closed and
    /// forgotten; its client then gets 404 and starts a new one.
    #[arg(long, env = "NRVNA_API_MCP_SESSION_IDLE", default_value_t = 300.0)]
    pub mcp_session_idle: f64,

    /// Most MCP sessions open at once; at the cap a new `initialize` gets
    /// 503 until idle sessions expire (or clients end theirs with DELETE).
    #[arg(long, env = "NRVNA_API_MCP_MAX_SESSIONS", default_value_t = 1000)]
    pub mcp_max_sessions: usize,

    /// Log level on stderr: error, warn, info, debug or trace.
    #[arg(long, env = "NRVNA_LOG_LEVEL", default_value = "info")]
    pub log_level: String,

    /// fsync, size limits and the waiters' poll for the jobs it publishes
    /// (each also from its NRVNA_* variable).
    #[command(flatten)]
    pub settings: nrvna_core::cli::SettingsArgs,

    /// Webhooks: --webhook URL (repeatable), NRVNA_WEBHOOK_SECRET, retries.
    #[command(flatten)]
    pub webhooks: nrvna_hooks::cli::WebhookArgs,
}

/// The settings the server runs with.
#[derive(Clone, Debug)]
pub struct Config {
    pub workspace: PathBuf,
    pub listen: SocketAddr,
    pub api_key: Option<String>,
    pub mcp: bool,
    /// `--metrics-public`: /metrics needs no key.
    pub metrics_public: bool,
    pub max_body: usize,
    pub timeout: Duration,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub max_connections: usize,
    pub mcp_session_idle: Duration,
    pub mcp_max_sessions: usize,
    pub log_level: String,
    /// The workspace settings (fsync, limits, poll).
    pub settings: nrvna_core::Settings,
    /// Webhook delivery, when a secret is set.
    pub webhooks: Option<nrvna_hooks::Config>,
}

impl Args {
    /// Checks the flags and builds the configuration.
    pub fn into_config(self) -> anyhow::Result<Config> {
        let api_key = match self.api_key {
            Some(k) => Some(check_key(&k)?.to_owned()),
            None => None,
        };
        if !self.mcp && api_key.is_none() && !self.listen.ip().is_loopback() {
            anyhow::bail!(
                "refusing to listen on {} without an API key: set NRVNA_API_KEY (or --api-key), \
                 or listen on loopback (--listen 127.0.0.1:8080)",
                self.listen
            );
        }
        let secs = |flag: &str, v: f64| {
            if v.is_finite() && v > 0.0 && v < 1e9 {
                Ok(Duration::from_secs_f64(v))
            } else {
                Err(anyhow::anyhow!("--{flag} must be a number of seconds > 0 (got {v})"))
            }
        };
        if self.max_connections == 0 || self.mcp_max_sessions == 0 {
            anyhow::bail!("--max-connections and --mcp-max-sessions must be at least 1");
        }
        Ok(Config {
            workspace: self.workspace,
            listen: self.listen,
            api_key,
            mcp: self.mcp,
            metrics_public: self.metrics_public,
            max_body: self.max_body,
            timeout: secs("timeout", self.timeout)?,
            header_timeout: secs("header-timeout", self.header_timeout)?,
            body_timeout: secs("body-timeout", self.body_timeout)?,
            max_connections: self.max_connections,
            mcp_session_idle: secs("mcp-session-idle", self.mcp_session_idle)?,
            mcp_max_sessions: self.mcp_max_sessions,
            log_level: self.log_level,
            settings: self.settings.settings(),
            webhooks: self.webhooks.config().map_err(anyhow::Error::msg)?,
        })
    }
}

/// The key as clients will send it: surrounding blanks removed, then at
/// least one character, all visible ASCII (what a `Bearer` token can carry).
fn check_key(key: &str) -> anyhow::Result<&str> {
    let k = key.trim();
    if k.is_empty() {
        anyhow::bail!(
            "the API key (NRVNA_API_KEY or --api-key) is empty or only blanks, so no client could send it: \
             set a key of visible ASCII characters, or unset NRVNA_API_KEY to serve loopback without one"
        );
    }
    if let Some(c) = k.chars().find(|c| !c.is_ascii_graphic()) {
        anyhow::bail!(
            "the API key (NRVNA_API_KEY or --api-key) contains {c:?}, which an `Authorization: Bearer` \
             header cannot carry: use visible ASCII characters only (0x21-0x7e), e.g. `openssl rand -hex 32`"
        );
    }
    Ok(k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beyond_loopback_needs_a_key() {
        // The key comes from the flag only here, whatever NRVNA_API_KEY says.
        let parse = |args: &[&str]| {
            let mut a = Args::try_parse_from(args).unwrap();
            if !args.contains(&"--api-key") {
                a.api_key = None;
            }
            a.into_config()
        };
        assert!(parse(&["nrvna-api", "ws"]).is_ok());
        let e = parse(&["nrvna-api", "ws", "--listen", "0.0.0.0:8080"]).unwrap_err();
        assert!(e.to_string().contains("NRVNA_API_KEY"), "{e}");
        assert!(parse(&["nrvna-api", "ws", "--listen", "0.0.0.0:8080", "--api-key", "k"]).is_ok());
        assert!(parse(&["nrvna-api", "ws", "--listen", "[::1]:8080"]).is_ok());
    }

    #[test]
    fn a_key_no_client_can_send_is_refused() {
        let parse = |key: &str| {
            Args::try_parse_from(["nrvna-api", "ws", "--api-key", key])
                .unwrap()
                .into_config()
        };
        for bad in ["", " ", "\t", "ключ", "two words", "k\u{7f}"] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(e.contains("API key"), "{bad:?}: {e}");
        }
        assert_eq!(parse("  k3y!~  ").unwrap().api_key.as_deref(), Some("k3y!~"));
    }
}
