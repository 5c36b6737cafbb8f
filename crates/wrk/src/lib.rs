//! `wrk`: submit one job (or a batch file of jobs) to an nrvna workspace
//! and print its id. Everything is checked before anything is written, and
//! a refused submission publishes nothing (see `docs/FORMAT.md`).

pub mod cli;
pub mod constraint;
pub mod prompt;

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use anyhow::{anyhow, Context, Result};
use nrvna_core::media::{load_for_submit, MediaKind};
use nrvna_core::{batch, limits, webhook};
use nrvna_core::{JobId, JobType, Params, Submission, Workspace};

pub use cli::Args;

/// The prompt of a vision job submitted without one.
pub const VISION_DEFAULT_PROMPT: &str = "Describe the image.";

/// Runs `wrk` with parsed arguments. Prints the job id (or the batch tag)
/// on stdout; every error is returned for `main` to print.
pub fn run(args: Args) -> Result<ExitCode> {
    let settings = args.settings.settings();
    let params = params_from(&args);
    let tags = tags_of(&args);
    let parent = args
        .parent
        .as_deref()
        .map(|p| JobId::parse(p).map_err(|e| anyhow!("--parent {p:?} is not a job id: {e}")))
        .transpose()?;
    let notify = notify_of(&args)?;

    let printed = if let Some(file) = &args.batch {
        let defaults = batch::Defaults {
            // Batch work yields to interactive jobs unless told otherwise.
            params: Params {
                priority: Some(args.priority.unwrap_or(nrvna_core::Priority::Low)),
                ..params
            },
            tags,
            parent,
        };
        defaults
            .params
            .validate()
            .map_err(|e| anyhow!("invalid parameters: {e}"))?;
        let tag = batch::new_batch_tag();
        let bytes = batch::read_file(file)?;
        let mut subs = batch::parse(&bytes, &defaults, &tag, settings.max_prompt_bytes)
            .with_context(|| format!("refusing batch file {}", file.display()))?;
        if let Some(n) = &notify {
            for s in &mut subs {
                s.extra_meta.insert(webhook::NOTIFY_KEY.into(), n.clone());
            }
        }
        let ws = open_or_create(&args)?;
        // A batch counts its lines against the workspace's queue limit.
        let _admitted = limits::admit(&ws, subs.len() as u64)?;
        batch::publish_all(&ws, &subs)
            .with_context(|| format!("submitting batch file {} to {}", file.display(), ws.root().display()))?;
        tag
    } else {
        let mut sub = Submission::text(String::new());
        sub.tags = tags;
        sub.parent = parent;
        sub.params = params;
        if let Some(n) = notify {
            sub.extra_meta.insert(webhook::NOTIFY_KEY.into(), n);
        }
        sub.job_type = if args.embed {
            JobType::Embed
        } else if args.stt {
            JobType::Stt
        } else if args.tts {
            JobType::Tts
        } else if !args.images.is_empty() {
            JobType::Vision
        } else {
            JobType::Text
        };
        // Every file is read and checked before anything is written.
        for (files, kind) in [(&args.images, MediaKind::Image), (&args.audio, MediaKind::Audio)] {
            for f in files {
                sub.media
                    .push(load_for_submit(f, kind, &settings).map_err(|e| anyhow!("refusing the job: {e}"))?);
            }
        }
        sub.output = match (&args.json_schema, &args.grammar) {
            (Some(_), Some(_)) => return Err(anyhow!("--json-schema and --grammar cannot be used together; give one")),
            (Some(f), None) => Some(constraint::json_schema_file(f)?),
            (None, Some(f)) => Some(constraint::grammar_file(f)?),
            (None, None) => None,
        };
        // With media the prompt may be empty: no PROMPT words on a terminal
        // is an empty prompt (a pipe is still read).
        sub.prompt = if sub.media.is_empty() || !args.prompt.is_empty() || !std::io::stdin().is_terminal() {
            prompt::from_args_or_stdin(&args.prompt, settings.max_prompt_bytes)?
        } else {
            String::new()
        };
        // The C++ daemon runs an empty prompt only for embeddings and speech
        // to text: a vision job without one gets the task spelled out, so
        // that it runs on either daemon.
        if sub.job_type == JobType::Vision && sub.prompt.is_empty() {
            sub.prompt = VISION_DEFAULT_PROMPT.to_owned();
        }
        sub.validate(settings.max_prompt_bytes)?;
        let ws = open_or_create(&args)?;
        let _admitted = limits::admit(&ws, 1)?;
        sub.publish(&ws)
            .with_context(|| format!("submitting a job to {}", ws.root().display()))?
            .to_string()
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "{printed}")?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// `--notify`: meta.json's `notify` (`true`: the workspace's endpoints;
/// a URL, checked here so a bad one publishes nothing).
fn notify_of(a: &Args) -> Result<Option<serde_json::Value>> {
    match a.notify.as_deref() {
        None => Ok(None),
        Some("") => Ok(Some(true.into())),
        Some(u) => {
            webhook::check_url(u).map_err(|e| anyhow!("--notify {e}; nothing was submitted"))?;
            Ok(Some(u.into()))
        }
    }
}

/// --tag, plus `keep` with --keep (once).
fn tags_of(a: &Args) -> Vec<String> {
    let mut tags = a.tags.clone();
    if a.keep && !tags.iter().any(|t| t == nrvna_core::retention::KEEP_TAG) {
        tags.push(nrvna_core::retention::KEEP_TAG.to_owned());
    }
    tags
}

/// The sampling flags as `params.json` (validated when the job is).
fn params_from(a: &Args) -> Params {
    Params {
        system: a.system.clone(),
        temp: a.temp,
        top_k: a.top_k,
        top_p: a.top_p,
        min_p: a.min_p,
        repeat_penalty: a.repeat_penalty,
        frequency_penalty: a.frequency_penalty,
        presence_penalty: a.presence_penalty,
        seed: a.seed,
        max_tokens: a.max_tokens,
        stop: (!a.stop.is_empty()).then(|| a.stop.clone()),
        timeout_s: a.timeout,
        priority: a.priority,
        model: a.model.clone(),
    }
}

fn open_or_create(a: &Args) -> Result<Workspace> {
    let ws = Workspace::create(&a.workspace).with_context(|| {
        format!(
            "opening workspace {}; check that the path is a directory you can write to",
            a.workspace.display()
        )
    })?;
    Ok(ws.with_settings(a.settings.settings()))
}
