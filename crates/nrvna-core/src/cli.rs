//! What the command-line tools share (feature `cli`): the settings flags
//! with their environment variables, the way a bad value from a variable is
//! reported (naming the variable), and the `main` of a light tool (`wrk`,
//! `flw`): parse, run, map the result to an exit code, and treat a closed
//! stdout (`| head`) as success.

use std::ffi::OsString;
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{CommandFactory, Parser};

use crate::config::{parse_switch, Settings};
use crate::config::{DEFAULT_MAX_AUDIO_BYTES, DEFAULT_MAX_IMAGE_BYTES, DEFAULT_MAX_PROMPT_BYTES, DEFAULT_WAIT_POLL_MS};

/// The workspace settings as flags, each with its variable. Flatten it
/// into a tool's arguments and call [`SettingsArgs::settings`] once.
#[derive(clap::Args, Clone, Debug, PartialEq, Eq)]
#[command(next_help_heading = "Workspace settings")]
pub struct SettingsArgs {
    /// fsync files and directories at every transition (0 for scratch
    /// workspaces, where durability does not matter).
    #[arg(long, env = "NRVNA_FSYNC", default_value = "1", value_parser = switch, action = clap::ArgAction::Set, value_name = "0|1")]
    pub fsync: bool,
    /// Largest prompt.txt, in bytes.
    #[arg(long, env = "NRVNA_MAX_PROMPT_SIZE", default_value_t = DEFAULT_MAX_PROMPT_BYTES,
          value_parser = clap::value_parser!(u64).range(1..), value_name = "BYTES")]
    pub max_prompt_size: u64,
    /// Largest image a job may hold, in bytes.
    #[arg(long, env = "NRVNA_MAX_IMAGE_SIZE", default_value_t = DEFAULT_MAX_IMAGE_BYTES,
          value_parser = clap::value_parser!(u64).range(1..), value_name = "BYTES")]
    pub max_image_size: u64,
    /// Largest audio file a job may hold, in bytes.
    #[arg(long, env = "NRVNA_MAX_AUDIO_SIZE", default_value_t = DEFAULT_MAX_AUDIO_BYTES,
          value_parser = clap::value_parser!(u64).range(1..), value_name = "BYTES")]
    pub max_audio_size: u64,
    /// How often a waiter looks again when no filesystem event comes, in
    /// milliseconds (inotify wakes it at once on local filesystems).
    #[arg(long, env = "NRVNA_WAIT_POLL_MS", default_value_t = DEFAULT_WAIT_POLL_MS,
          value_parser = clap::value_parser!(u64).range(10..), value_name = "MS")]
    pub wait_poll_ms: u64,
}

impl SettingsArgs {
    /// The settings these flags give.
    pub fn settings(&self) -> Settings {
        Settings {
            fsync: self.fsync,
            max_prompt_bytes: self.max_prompt_size,
            wait_poll: Duration::from_millis(self.wait_poll_ms),
            max_image_bytes: self.max_image_size,
            max_audio_bytes: self.max_audio_size,
        }
    }
}

/// clap value parser for on/off switches (1/0, on/off, true/false, yes/no).
pub fn switch(v: &str) -> Result<bool, String> {
    parse_switch(v).ok_or_else(|| format!("{v:?} is not a switch; use 1 or 0"))
}

/// When `e` is a bad value that came from an environment variable (its flag
/// was not given on the command line `argv`), the line that names the
/// variable: `NRVNA_X="v" is not a valid value for --x; fix or unset NRVNA_X`.
pub fn env_value_error<C: CommandFactory>(e: &clap::Error, argv: &[OsString]) -> Option<String> {
    if !matches!(e.kind(), ErrorKind::InvalidValue | ErrorKind::ValueValidation) {
        return None;
    }
    let arg = match e.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(s)) => s.clone(),
        _ => return None,
    };
    let cmd = C::command();
    let mut all: Vec<&clap::Arg> = cmd.get_arguments().collect();
    for sub in cmd.get_subcommands() {
        all.extend(sub.get_arguments());
    }
    all.into_iter().find_map(|a| {
        let long = a.get_long()?;
        let var = a.get_env()?;
        let flag = format!("--{long}");
        let given = argv.iter().any(|x| {
            let x = x.to_string_lossy();
            x == flag || x.starts_with(&format!("{flag}="))
        });
        let value = std::env::var_os(var)?;
        (arg.starts_with(&flag) && !given).then(|| {
            let var = var.to_string_lossy();
            format!(
                "{var}={:?} is not a valid value for {arg}; fix or unset {var}",
                value.to_string_lossy()
            )
        })
    })
}

/// Parses the process's arguments (and variables) into `C`. `Err` holds the
/// exit code after printing: 0 for `--help` and `--version`, `usage_code`
/// for a usage error, whose message names the variable when a variable
/// held the bad value.
pub fn parse_or_exit_code<C: Parser>(tool: &str, usage_code: u8) -> Result<C, ExitCode> {
    let argv: Vec<OsString> = std::env::args_os().collect();
    match C::try_parse_from(&argv) {
        Ok(c) => Ok(c),
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            Err(ExitCode::SUCCESS)
        }
        Err(e) => {
            let mut err = std::io::stderr().lock();
            if let Some(line) = env_value_error::<C>(&e, &argv) {
                let _ = writeln!(err, "{tool}: {line}");
            }
            let msg = e.render().to_string();
            let msg = msg.strip_prefix("error: ").unwrap_or(&msg);
            let _ = write!(err, "{tool}: {msg}");
            Err(ExitCode::from(usage_code))
        }
    }
}

/// Whether an error is stdout closed under us (`flw WS | head`): the tools
/// end quietly and successfully then.
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// The `main` of a light tool: parse `A` (a usage error exits 1), run, and
/// turn the result into the exit code (an error is printed as
/// `TOOL: message` and exits 1; a closed stdout exits 0).
pub fn tool_main<A: Parser>(tool: &str, run: impl FnOnce(A) -> anyhow::Result<ExitCode>) -> ExitCode {
    let args = match parse_or_exit_code::<A>(tool, 1) {
        Ok(a) => a,
        Err(code) => return code,
    };
    match run(args) {
        Ok(code) => code,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "{tool}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Parser, Debug)]
    struct Tool {
        #[command(flatten)]
        settings: SettingsArgs,
    }

    #[test]
    fn flags_build_the_settings_value() {
        let t =
            Tool::try_parse_from(["t", "--fsync", "off", "--max-prompt-size", "10", "--wait-poll-ms", "20"]).unwrap();
        let s = t.settings.settings();
        assert!(!s.fsync);
        assert_eq!(s.max_prompt_bytes, 10);
        assert_eq!(s.wait_poll, Duration::from_millis(20));
        assert_eq!(s.max_image_bytes, DEFAULT_MAX_IMAGE_BYTES);
    }

    #[test]
    fn a_bad_flag_value_is_refused_without_naming_a_variable() {
        let argv: Vec<OsString> = ["t", "--fsync", "maybe"].iter().map(OsString::from).collect();
        let e = Tool::try_parse_from(&argv).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ValueValidation);
        // NRVNA_FSYNC is not looked at when the flag was given.
        assert_eq!(env_value_error::<Tool>(&e, &argv), None);
        let e = Tool::try_parse_from(["t", "--wait-poll-ms", "5"]).unwrap_err();
        assert!(e.to_string().contains("--wait-poll-ms"), "{e}");
    }
}
