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
  1  could not start (bad configuration, address in use, no workspace); the reason is on stderr

Once listening, the address is printed on stdout as one line (`http://ADDR`).

Endpoints (OpenAI-compatible, under /v1):
  POST /v1/chat/completions  POST /v1/completions  POST /v1/embeddings  GET /v1/models
  POST /v1/files  GET /v1/files/{id}  GET /v1/files/{id}/content
  POST /v1/batches  GET /v1/batches  GET /v1/batches/{id}  POST /v1/batches/{id}/cancel
  /mcp  MCP (streamable HTTP)

Examples:
  nrvnad SmolLM2-135M-Instruct.Q4_1 ws &  nrvna-api ws
  NRVNA_API_KEY=secret nrvna-api ws --listen 0.0.0.0:8080
  nrvna-api ws --mcp          # MCP on stdin/stdout";

/// Serve an nrvna workspace over an OpenAI-compatible HTTP API and MCP.
///
/// Every request becomes a job in WS (published like `wrk` does); any daemon
/// serving WS (nrvnad, or the C++ one) runs it. Nothing a client submitted
/// lives only in this process: batches and uploaded files are kept in WS/api/.
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

    /// Largest request body in bytes (uploads included).
    #[arg(long, env = "NRVNA_API_MAX_BODY", default_value_t = 64 * 1024 * 1024)]
    pub max_body: usize,

    /// Longest a synchronous request waits for its job, in seconds; the
    /// job is cancelled when it runs out.
    #[arg(long, env = "NRVNA_API_TIMEOUT", default_value_t = 600.0)]
    pub timeout: f64,

    /// Log level on stderr: error, warn, info, debug or trace.
    #[arg(long, env = "NRVNA_LOG_LEVEL", default_value = "info")]
    pub log_level: String,

    /// fsync, size limits and the waiters' poll for the jobs it publishes
    /// (each also from its NRVNA_* variable).
    #[command(flatten)]
    pub settings: nrvna_core::cli::SettingsArgs,
}

/// The settings the server runs with.
#[derive(Clone, Debug)]
pub struct Config {
    pub workspace: PathBuf,
    pub listen: SocketAddr,
    pub api_key: Option<String>,
    pub mcp: bool,
    pub max_body: usize,
    pub timeout: Duration,
    pub log_level: String,
    /// The workspace settings (fsync, limits, poll).
    pub settings: nrvna_core::Settings,
}

impl Args {
    /// Checks the flags and builds the configuration.
    pub fn into_config(self) -> anyhow::Result<Config> {
        let api_key = self.api_key.filter(|k| !k.is_empty());
        if !self.mcp && api_key.is_none() && !self.listen.ip().is_loopback() {
            anyhow::bail!(
                "refusing to listen on {} without an API key: set NRVNA_API_KEY (or --api-key), \
                 or listen on loopback (--listen 127.0.0.1:8080)",
                self.listen
            );
        }
        if !(self.timeout.is_finite() && self.timeout > 0.0) {
            anyhow::bail!("--timeout must be a number of seconds > 0");
        }
        Ok(Config {
            workspace: self.workspace,
            listen: self.listen,
            api_key,
            mcp: self.mcp,
            max_body: self.max_body,
            timeout: Duration::from_secs_f64(self.timeout),
            log_level: self.log_level,
            settings: self.settings.settings(),
        })
    }
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
}
