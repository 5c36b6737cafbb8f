//! `wrk`'s command line: clap derive, where each flag's doc comment is its
//! help. Kept apart from `main` so tests and `run` share one definition.

use std::path::PathBuf;

use clap::Parser;

const AFTER_HELP: &str = "\
Exit codes:
  0  the job was published; its id (or, with --batch, the batch's tag) is on stdout
  1  refused or failed; the reason is on stderr and nothing was published

The prompt comes from the PROMPT words (joined by single spaces), from stdin
when PROMPT is `-`, or from stdin when no PROMPT is given and stdin is not a
terminal. One trailing newline is stripped from stdin.

Environment: each workspace setting above may come from its variable
(NRVNA_MAX_PROMPT_SIZE, NRVNA_MAX_IMAGE_SIZE, NRVNA_MAX_AUDIO_SIZE,
NRVNA_FSYNC=0 to skip fsync on scratch workspaces); a flag wins over it.

Examples:
  wrk ./ws 'Write a haiku about rivers'
  echo 'Summarise this' | wrk ./ws --tag notes
  wrk ./ws --json-schema person.schema.json 'Invent a person'
  wrk ./ws 'What is in this picture?' -i photo.jpg
  wrk ./ws --embed -i photo.jpg 'a caption'
  wrk ./ws --audio memo.wav --stt
  wrk ./ws --tts 'Hello there'
  wrk ./ws --batch requests.jsonl          # prints the batch tag
  wrk ./ws hi | flw ./ws -w                # submit, wait, print the result";

/// Submit a job to an nrvna workspace and print its id.
///
/// The job is staged in WS/input/writing/ and published with one rename
/// into WS/input/ready/, where a daemon (nrvnad) picks it up. The workspace
/// is created when it does not exist.
#[derive(Debug, Parser)]
#[command(name = "wrk", version, disable_version_flag = true, after_long_help = AFTER_HELP, after_help = "Exit codes: 0 published (id on stdout), 1 refused or failed (reason on stderr). See --help for more.")]
pub struct Args {
    /// The workspace directory (created when missing).
    #[arg(value_name = "WS")]
    pub workspace: PathBuf,

    /// Print the version and exit (-V also works).
    #[arg(short = 'v', short_alias = 'V', long = "version", action = clap::ArgAction::Version)]
    pub version: Option<bool>,

    /// The prompt, as words joined by single spaces; `-` reads it from stdin.
    #[arg(value_name = "PROMPT")]
    pub prompt: Vec<String>,

    /// Tag the job (repeatable): 1-64 characters from [A-Za-z0-9_-].
    #[arg(long = "tag", value_name = "T")]
    pub tags: Vec<String>,

    /// Pin the job: tag it `keep`, so that retention (nrvnad --retain-*,
    /// flw --prune) never removes it. Same as --tag keep.
    #[arg(long)]
    pub keep: bool,

    /// Record a parent job (its id), for `flw WS --children ID`.
    #[arg(long, value_name = "ID")]
    pub parent: Option<String>,

    /// System prompt for this job (default: the daemon's).
    #[arg(long, value_name = "TEXT")]
    pub system: Option<String>,

    /// Sampling temperature, >= 0; 0 means greedy (default: the daemon's).
    #[arg(long, value_name = "F", allow_negative_numbers = true)]
    pub temp: Option<f32>,

    /// Top-k sampling, >= 0; 0 disables it.
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub top_k: Option<i32>,

    /// Top-p (nucleus) sampling, in (0, 1].
    #[arg(long, value_name = "F", allow_negative_numbers = true)]
    pub top_p: Option<f32>,

    /// Min-p sampling, in [0, 1].
    #[arg(long, value_name = "F", allow_negative_numbers = true)]
    pub min_p: Option<f32>,

    /// Repetition penalty, > 0; 1 disables it.
    #[arg(long, value_name = "F", allow_negative_numbers = true)]
    pub repeat_penalty: Option<f32>,

    /// Frequency penalty (OpenAI's), from -2 to 2: subtracted once per
    /// time a token occurred in the penalty window; 0 disables it.
    #[arg(long, value_name = "F", allow_negative_numbers = true)]
    pub frequency_penalty: Option<f32>,

    /// Presence penalty (OpenAI's), from -2 to 2: subtracted from every
    /// token that occurred in the penalty window; 0 disables it.
    #[arg(long, value_name = "F", allow_negative_numbers = true)]
    pub presence_penalty: Option<f32>,

    /// Sampling seed, for reproducible output.
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub seed: Option<u32>,

    /// Stop after this many generated tokens (>= 1).
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub max_tokens: Option<u32>,

    /// Stop generating at this string (repeatable, at most 16).
    #[arg(long = "stop", value_name = "STR")]
    pub stop: Vec<String>,

    /// Fail the job when it runs longer than this many seconds.
    #[arg(long, value_name = "SECONDS", allow_negative_numbers = true)]
    pub timeout: Option<f64>,

    /// Queue priority: a daemon that knows priorities runs higher ones
    /// first (default: normal; low for --batch).
    #[arg(long, value_name = "high|normal|low")]
    pub priority: Option<nrvna_core::Priority>,

    /// Run only on a daemon serving this model (its file name, file stem,
    /// or the model's own name), for workspaces shared by daemons with
    /// different models (default: any daemon).
    #[arg(long, value_name = "NAME")]
    pub model: Option<String>,

    /// Make an embedding job: the prompt is the text to embed.
    #[arg(long, conflicts_with_all = ["json_schema", "grammar"])]
    pub embed: bool,

    /// Attach an image (repeatable): a vision job, or with --embed an
    /// embedding of the text and images together. png, jpg, gif, webp or
    /// bmp, at most NRVNA_MAX_IMAGE_SIZE bytes (default 50 MiB). Without
    /// a prompt, a vision job asks "Describe the image." and an embedding
    /// embeds the images alone. The daemon needs a projector (--mmproj).
    #[arg(short = 'i', long = "image", value_name = "FILE", conflicts_with_all = ["audio", "tts"])]
    pub images: Vec<PathBuf>,

    /// Attach an audio file (repeatable) for a speech-to-text job (--stt).
    /// wav, mp3 or flac, at most NRVNA_MAX_AUDIO_SIZE bytes (default 200 MiB).
    #[arg(long = "audio", value_name = "FILE", requires = "stt", conflicts_with_all = ["embed", "tts"])]
    pub audio: Vec<PathBuf>,

    /// Speech to text: transcribe the --audio files into transcript.txt
    /// (the prompt, optional, is the task).
    #[arg(long, requires = "audio", conflicts_with_all = ["embed", "json_schema", "grammar"])]
    pub stt: bool,

    /// Text to speech: the prompt is read aloud into audio.wav (24 kHz mono
    /// 16-bit). The daemon needs an OuteTTS model and its vocoder.
    #[arg(long, conflicts_with_all = ["embed", "json_schema", "grammar", "stt"])]
    pub tts: bool,

    /// Constrain the output to this JSON Schema (stored as schema.json, and
    /// turned into the grammar stored as grammar.gbnf; a schema with a
    /// constraint no grammar can enforce, such as uniqueItems, is
    /// refused with the reason).
    #[arg(long, value_name = "FILE", conflicts_with = "grammar")]
    pub json_schema: Option<PathBuf>,

    /// Constrain the output to this GBNF grammar (stored as grammar.gbnf).
    #[arg(long, value_name = "FILE")]
    pub grammar: Option<PathBuf>,

    /// Submit every request of an OpenAI Batch API input file (JSONL) and
    /// print the batch's tag instead of an id. All of the file's jobs are
    /// published, or none. The sampling flags above are defaults that a
    /// request's body overrides; --tag and --parent apply to every job.
    #[arg(long, value_name = "FILE.jsonl", conflicts_with_all = ["prompt", "embed", "json_schema", "grammar", "images", "audio", "stt", "tts"])]
    pub batch: Option<PathBuf>,

    /// Send a signed webhook (job.done or job.failed) when the job ends:
    /// to URL (http://HOST[:PORT]/PATH), or without one to the workspace's
    /// endpoints (nrvnad/nrvna-api --webhook). Recorded in the job's
    /// meta.json (`notify`); a daemon or gateway with NRVNA_WEBHOOK_SECRET
    /// delivers it. With --batch: every job of the file. Before the prompt,
    /// write --notify=URL (or nothing) so the prompt's first word is not
    /// taken for the URL.
    #[arg(long, value_name = "URL", num_args = 0..=1, default_missing_value = "")]
    pub notify: Option<String>,

    /// fsync, size limits and the waiters' poll (each also from its
    /// NRVNA_* variable).
    #[command(flatten)]
    pub settings: nrvna_core::cli::SettingsArgs,
}
