//! The MCP server (official Rust SDK, `rmcp`): tools that let an agent
//! submit a job (text, embedding, JSON-schema constrained), check its
//! status, wait for it, read its result, list jobs by tag and cancel one.
//! Served on stdin/stdout (`nrvna-api WS --mcp`) and as streamable HTTP at
//! `/mcp` on the gateway. Tool errors come back as tool results with
//! `isError`, saying what to do next.

use std::sync::Arc;
use std::time::Duration;

use nrvna_core::cancel::cancel_job;
use nrvna_core::{JobId, JobType, OutputFormat, Params, Priority, Submission};
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::schemars::{self, JsonSchema};
use rmcp::{tool, tool_handler, tool_router, ServerHandler};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::jobs::Finished;
use crate::App;

#[derive(Clone)]
pub struct NrvnaMcp {
    app: Arc<App>,
    tool_router: ToolRouter<Self>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct SubmitArgs {
    /// The prompt (for an embedding job: the text to embed).
    pub prompt: String,
    /// `text` (default) or `embed`.
    pub kind: Option<String>,
    /// A JSON Schema the output must follow (text jobs).
    pub json_schema: Option<Value>,
    /// System prompt.
    pub system: Option<String>,
    /// Most tokens to generate.
    pub max_tokens: Option<u32>,
    /// Sampling temperature (0 = greedy).
    pub temperature: Option<f32>,
    /// Sampling seed.
    pub seed: Option<u32>,
    /// Tags (1-64 characters from [A-Za-z0-9_-]) to find the job by later.
    pub tags: Option<Vec<String>>,
    /// `high`, `normal` (default) or `low`.
    pub priority: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct IdArgs {
    /// The job id that `submit` returned.
    pub id: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct WaitArgs {
    /// The job id that `submit` returned.
    pub id: String,
    /// Longest wait in seconds (default 60, at most 600).
    pub timeout_s: Option<f64>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct TagArgs {
    /// The tag given at submit.
    pub tag: String,
}

fn parse_id(id: &str) -> Result<JobId, String> {
    JobId::parse(id).map_err(|e| format!("{id:?} is not a job id ({e}); use the id that submit returned"))
}

impl NrvnaMcp {
    pub fn new(app: Arc<App>) -> NrvnaMcp {
        NrvnaMcp {
            app,
            tool_router: Self::tool_router(),
        }
    }

    fn summary(&self, id: &JobId) -> Result<Value, String> {
        match self.app.jobs.ws.job(id) {
            Some(j) => Ok(j.summary()),
            None => Err(format!("no job {id} in this workspace")),
        }
    }
}

#[tool_router]
impl NrvnaMcp {
    #[tool(
        description = "Queue an inference job in the nrvna workspace (durable: it survives restarts). Returns {\"id\"}. Use wait or result with the id."
    )]
    async fn submit(&self, Parameters(a): Parameters<SubmitArgs>) -> Result<String, String> {
        let mut sub = Submission::text(a.prompt);
        match a.kind.as_deref() {
            None | Some("text") => {}
            Some("embed") => sub.job_type = JobType::Embed,
            Some(k) => return Err(format!("kind {k:?} is not one of text, embed")),
        }
        let priority = match a.priority.as_deref() {
            None => None,
            Some(p) => Some(p.parse::<Priority>()?),
        };
        sub.params = Params {
            system: a.system,
            max_tokens: a.max_tokens,
            temp: a.temperature,
            seed: a.seed,
            priority,
            ..Params::default()
        };
        if let Some(schema) = a.json_schema {
            if sub.job_type == JobType::Embed {
                return Err("json_schema applies to text jobs, not embeddings".into());
            }
            let grammar = nrvna_schema::check::check_schema(&schema).map_err(|e| format!("json_schema {e}"))?;
            sub.output = Some(OutputFormat::JsonSchema {
                schema: format!("{schema:#}\n"),
                grammar,
            });
        }
        sub.tags = a.tags.unwrap_or_default();
        let (mut ids, guard) = self.app.jobs.publish(vec![sub]).await.map_err(|e| e.message)?;
        // The job outlives this call: the agent waits for it later.
        guard.disarm();
        let id = ids.remove(0);
        Ok(json!({"id": id.as_str()}).to_string())
    }

    #[tool(description = "A job's status (queued, running, done, failed, missing) and its meta.json summary.")]
    async fn status(&self, Parameters(a): Parameters<IdArgs>) -> Result<String, String> {
        Ok(self.summary(&parse_id(&a.id)?)?.to_string())
    }

    #[tool(description = "Wait until a job is done or failed (or timeout_s passes); returns its status summary.")]
    async fn wait(&self, Parameters(a): Parameters<WaitArgs>) -> Result<String, String> {
        let id = parse_id(&a.id)?;
        let secs = a.timeout_s.unwrap_or(60.0).clamp(0.0, 600.0);
        let deadline = Instant::now() + Duration::from_secs_f64(secs);
        self.app.jobs.wait(&id, deadline).await.map_err(|e| e.message)?;
        Ok(self.summary(&id)?.to_string())
    }

    #[tool(
        description = "A finished job's result: the generated text, or the embedding as JSON. Fails while the job is queued or running, and with the reason when the job failed."
    )]
    async fn result(&self, Parameters(a): Parameters<IdArgs>) -> Result<String, String> {
        let id = parse_id(&a.id)?;
        let job = self
            .app
            .jobs
            .ws
            .job(&id)
            .ok_or_else(|| format!("no job {id} in this workspace"))?;
        if !job.state.is_terminal() {
            return Err(format!("job {id} is still {}; call wait first", job.state.label()));
        }
        let fin = Finished::read(&job).map_err(|e| e.message)?;
        if let Some(t) = fin.text() {
            return Ok(t);
        }
        match &fin.artifact {
            Some((_, b)) => Ok(String::from_utf8_lossy(b).into_owned()),
            None => Err(fin.failure(&id).message),
        }
    }

    #[tool(description = "Every job with a tag, ordered by id: one status summary per job (a JSON array).")]
    async fn list(&self, Parameters(a): Parameters<TagArgs>) -> Result<String, String> {
        if !nrvna_core::meta::valid_tag(&a.tag) {
            return Err(format!(
                "{:?} is not a tag: tags are 1-64 characters from [A-Za-z0-9_-]",
                a.tag
            ));
        }
        let ws = self.app.jobs.ws.clone();
        let rows = tokio::task::spawn_blocking(move || {
            let mut rows = crate::batches::tagged_jobs(&ws, &a.tag);
            rows.sort_by(|(a, _), (b, _)| a.id.cmp(&b.id));
            rows.iter().map(|(j, _)| j.summary()).collect::<Vec<_>>()
        })
        .await
        .map_err(|e| e.to_string())?;
        Ok(Value::Array(rows).to_string())
    }

    #[tool(
        description = "Cancel a job: a queued one fails at once, a running one is stopped by the daemon within a second."
    )]
    async fn cancel(&self, Parameters(a): Parameters<IdArgs>) -> Result<String, String> {
        let id = parse_id(&a.id)?;
        let ws = self.app.jobs.ws.clone();
        let jid = id.clone();
        let how = tokio::task::spawn_blocking(move || cancel_job(&ws, &jid))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("cancelling job {id}: {e}"))?;
        let what = match how {
            nrvna_core::cancel::Cancelled::Dequeued => "cancelled",
            nrvna_core::cancel::Cancelled::Requested => "stopping",
            nrvna_core::cancel::Cancelled::NotRunning(None) => return Err(format!("no job {id} in this workspace")),
            nrvna_core::cancel::Cancelled::NotRunning(Some(_)) => "not running",
        };
        Ok(json!({"id": id.as_str(), "cancel": what}).to_string())
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for NrvnaMcp {}
