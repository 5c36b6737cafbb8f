//! The contract library's settings, as one value: whether transitions
//! fsync, the largest prompt and media files accepted, and how often a
//! waiter polls when no filesystem event comes.
//!
//! Nothing here reads the environment. Each binary builds its `Settings`
//! once in `main` (clap, with `env=`; see [`crate::cli`] behind the `cli`
//! feature) and hands it to the [`crate::Workspace`] it opens; library code
//! asks the workspace. Two workspaces in one process may hold different
//! settings.

use std::time::Duration;

/// Default largest prompt, in bytes (`NRVNA_MAX_PROMPT_SIZE`).
pub const DEFAULT_MAX_PROMPT_BYTES: u64 = 1 << 20;
/// Default fallback poll of waiters (`flw -w`, `-W`, `-f`), in milliseconds.
pub const DEFAULT_WAIT_POLL_MS: u64 = 500;
/// Default largest image (`NRVNA_MAX_IMAGE_SIZE`): 50 MiB.
pub const DEFAULT_MAX_IMAGE_BYTES: u64 = 50 * 1024 * 1024;
/// Default largest audio file (`NRVNA_MAX_AUDIO_SIZE`): 200 MiB.
pub const DEFAULT_MAX_AUDIO_BYTES: u64 = 200 * 1024 * 1024;

/// The contract library's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// fsync file contents and parent directories at every transition.
    pub fsync: bool,
    /// The largest `prompt.txt`, in bytes.
    pub max_prompt_bytes: u64,
    /// How often waiters look again without a filesystem event (inotify
    /// wakes them at once; this is the fallback for filesystems without).
    pub wait_poll: Duration,
    /// The largest image a job may hold.
    pub max_image_bytes: u64,
    /// The largest audio file a job may hold.
    pub max_audio_bytes: u64,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            fsync: true,
            max_prompt_bytes: DEFAULT_MAX_PROMPT_BYTES,
            wait_poll: Duration::from_millis(DEFAULT_WAIT_POLL_MS),
            max_image_bytes: DEFAULT_MAX_IMAGE_BYTES,
            max_audio_bytes: DEFAULT_MAX_AUDIO_BYTES,
        }
    }
}

/// Parses an on/off value as the tools accept it.
pub fn parse_switch(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "on" | "true" | "yes" => Some(true),
        "0" | "off" | "false" | "no" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switches_parse_and_refuse_garbage() {
        assert_eq!(parse_switch("0"), Some(false));
        assert_eq!(parse_switch(" Off "), Some(false));
        assert_eq!(parse_switch("1"), Some(true));
        assert_eq!(parse_switch("maybe"), None);
    }
}
