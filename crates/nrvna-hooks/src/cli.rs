//! The webhook flags of `nrvna-api` and `nrvnad` (one definition for
//! both), turned into a [`Config`] once; the secret comes from the
//! environment here and nowhere deeper.

use std::time::Duration;

use nrvna_core::retention::parse_duration;
use nrvna_core::webhook::{check_url, Secret};

use crate::Config;

/// The environment variable holding the signing secret.
pub const SECRET_VAR: &str = "NRVNA_WEBHOOK_SECRET";

#[derive(Clone, Debug, Default, clap::Args)]
pub struct WebhookArgs {
    /// Send webhook events to this endpoint (repeatable; http://HOST[:PORT]/PATH):
    /// batch.* and background response.* events, and job.* events of jobs
    /// submitted with `wrk --notify` (no URL). Recorded as the workspace's
    /// endpoints in WS/.nrvna-webhooks/endpoints.json, so that whichever
    /// process delivers uses them. Needs NRVNA_WEBHOOK_SECRET.
    #[arg(long = "webhook", value_name = "URL")]
    pub webhooks: Vec<String>,

    /// The signing secret (`whsec_` + base64, as OpenAI's dashboard issues
    /// them); set NRVNA_WEBHOOK_SECRET rather than this flag. With a secret
    /// this process delivers webhooks (one process per workspace at a time;
    /// the others wait to take over).
    #[arg(long = "webhook-secret", env = SECRET_VAR, hide_env_values = true, hide = true)]
    pub secret: Option<String>,

    /// How long an event is retried (exponential backoff with jitter)
    /// before it is given up in WS/.nrvna-webhooks/dead/. Jobs and batches
    /// that ended longer ago than this get no event (a workspace's history
    /// is not sent when webhooks are first configured).
    #[arg(long, env = "NRVNA_WEBHOOK_RETRY_FOR", value_name = "DURATION", default_value = "72h", value_parser = parse_duration)]
    pub webhook_retry_for: Duration,

    /// The longest wait between two tries of one event.
    #[arg(long, env = "NRVNA_WEBHOOK_BACKOFF_MAX", value_name = "DURATION", default_value = "5m", value_parser = parse_duration)]
    pub webhook_backoff_max: Duration,

    /// How long delivered and given-up events stay in
    /// WS/.nrvna-webhooks/sent/ and dead/ after their last attempt (never
    /// before their retry period ends); the delivering process removes
    /// older ones every 10 minutes.
    #[arg(long, env = "NRVNA_WEBHOOK_KEEP", value_name = "DURATION", default_value = "7d", value_parser = parse_duration)]
    pub webhook_keep: Duration,
}

impl WebhookArgs {
    /// The delivery configuration: `None` without a secret (and without
    /// endpoints); an error for endpoints without a secret, a bad secret or
    /// a bad URL.
    pub fn config(&self) -> Result<Option<Config>, String> {
        for u in &self.webhooks {
            check_url(u).map_err(|e| format!("--webhook {e}"))?;
        }
        let secret = match self.secret.as_deref() {
            Some(s) => Secret::parse(s).map_err(|e| format!("{SECRET_VAR}: {e}"))?,
            None if self.webhooks.is_empty() => return Ok(None),
            None => {
                return Err(format!(
                    "--webhook needs a signing secret: set {SECRET_VAR}=whsec_... (make one with: \
                     export {SECRET_VAR}=whsec_$(openssl rand -base64 32)) and give receivers the same secret"
                ))
            }
        };
        if self.webhook_retry_for.is_zero() || self.webhook_backoff_max < Duration::from_millis(100) {
            return Err("--webhook-retry-for must be above 0 and --webhook-backoff-max at least 100ms".into());
        }
        let mut c = Config::new(self.webhooks.clone(), secret);
        c.retry_for = self.webhook_retry_for;
        c.backoff_max = self.webhook_backoff_max;
        c.keep = self.webhook_keep;
        c.backoff_base = c.backoff_base.min(c.backoff_max);
        Ok(Some(c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        w: WebhookArgs,
    }

    fn parse(args: &[&str]) -> Result<Option<Config>, String> {
        let mut t = T::try_parse_from(std::iter::once("t").chain(args.iter().copied())).unwrap();
        if !args.contains(&"--webhook-secret") {
            t.w.secret = None;
        }
        t.w.config()
    }

    #[test]
    fn endpoints_without_a_secret_are_refused_naming_the_variable() {
        let e = parse(&["--webhook", "http://127.0.0.1:9/x"]).unwrap_err();
        assert!(e.contains(SECRET_VAR) && e.contains("openssl rand"), "{e}");
        assert!(parse(&[]).unwrap().is_none());
        let k = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let c = parse(&[
            "--webhook",
            "http://h/x",
            "--webhook-secret",
            k,
            "--webhook-retry-for",
            "2h",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(c.endpoints, ["http://h/x"]);
        assert_eq!(c.retry_for, Duration::from_secs(7200));
        assert_eq!(c.keep, Duration::from_secs(7 * 86_400));
        let c = parse(&["--webhook-secret", k, "--webhook-keep", "36h"])
            .unwrap()
            .unwrap();
        assert_eq!(c.keep, Duration::from_secs(36 * 3600));
        // A secret alone: this process delivers (job URLs, the workspace's endpoints).
        assert!(parse(&["--webhook-secret", k]).unwrap().is_some());
        assert!(parse(&["--webhook", "https://h/x", "--webhook-secret", k])
            .unwrap_err()
            .contains("https"));
        assert!(parse(&["--webhook-secret", "nope"]).unwrap_err().contains(SECRET_VAR));
    }
}
