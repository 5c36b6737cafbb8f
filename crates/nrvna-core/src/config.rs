//! Process-wide settings of the contract library, built once: whether
//! transitions fsync (`NRVNA_FSYNC`), the largest prompt accepted
//! (`NRVNA_MAX_PROMPT_SIZE`), and how often a waiter polls when no
//! filesystem event comes (`NRVNA_WAIT_POLL_MS`). The daemon installs them from its flags; the
//! light tools read them from the environment at start, where a bad value is
//! an error that names the variable.

use std::sync::OnceLock;

/// Default largest prompt, in bytes.
pub const DEFAULT_MAX_PROMPT_BYTES: u64 = 1 << 20;
/// Default fallback poll of waiters (`flw -w`, `-W`, `-f`), in milliseconds.
pub const DEFAULT_WAIT_POLL_MS: u64 = 500;

/// The contract library's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// fsync file contents and parent directories at every transition.
    pub fsync: bool,
    /// The largest `prompt.txt`, in bytes.
    pub max_prompt_bytes: u64,
    /// How often waiters look again without a filesystem event (inotify
    /// wakes them at once; this is the fallback for filesystems without).
    pub wait_poll: std::time::Duration,
    /// The largest image a job may hold (`NRVNA_MAX_IMAGE_SIZE`).
    pub max_image_bytes: u64,
    /// The largest audio file a job may hold (`NRVNA_MAX_AUDIO_SIZE`).
    pub max_audio_bytes: u64,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            fsync: true,
            max_prompt_bytes: DEFAULT_MAX_PROMPT_BYTES,
            wait_poll: std::time::Duration::from_millis(DEFAULT_WAIT_POLL_MS),
            max_image_bytes: crate::media::DEFAULT_MAX_IMAGE_BYTES,
            max_audio_bytes: crate::media::DEFAULT_MAX_AUDIO_BYTES,
        }
    }
}

static SETTINGS: OnceLock<Settings> = OnceLock::new();

/// Parses an on/off value as the tools accept it.
pub fn parse_switch(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "on" | "true" | "yes" => Some(true),
        "0" | "off" | "false" | "no" => Some(false),
        _ => None,
    }
}

impl Settings {
    /// Reads `NRVNA_FSYNC` and `NRVNA_MAX_PROMPT_SIZE`; an unset or empty
    /// variable means the default, a malformed one is an error naming it.
    pub fn from_env() -> Result<Settings, String> {
        let mut s = Settings::default();
        if let Some(v) = std::env::var("NRVNA_FSYNC").ok().filter(|v| !v.trim().is_empty()) {
            s.fsync = parse_switch(&v)
                .ok_or_else(|| format!("NRVNA_FSYNC={v:?} is not a switch; use 1 or 0 (or unset it)"))?;
        }
        if let Some(v) = std::env::var("NRVNA_MAX_PROMPT_SIZE")
            .ok()
            .filter(|v| !v.trim().is_empty())
        {
            s.max_prompt_bytes = v.trim().parse().ok().filter(|&n| n > 0).ok_or_else(|| {
                format!("NRVNA_MAX_PROMPT_SIZE={v:?} is not a positive number of bytes; fix or unset it")
            })?;
        }
        if let Some(v) = std::env::var("NRVNA_WAIT_POLL_MS")
            .ok()
            .filter(|v| !v.trim().is_empty())
        {
            let ms: u64 = v.trim().parse().ok().filter(|&n| n >= 10).ok_or_else(|| {
                format!("NRVNA_WAIT_POLL_MS={v:?} is not a number of milliseconds (10 or more); fix or unset it")
            })?;
            s.wait_poll = std::time::Duration::from_millis(ms);
        }
        for (var, slot) in [
            ("NRVNA_MAX_IMAGE_SIZE", &mut s.max_image_bytes),
            ("NRVNA_MAX_AUDIO_SIZE", &mut s.max_audio_bytes),
        ] {
            if let Some(v) = std::env::var(var).ok().filter(|v| !v.trim().is_empty()) {
                *slot = v
                    .trim()
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| format!("{var}={v:?} is not a positive number of bytes; fix or unset it"))?;
            }
        }
        Ok(s)
    }
}

/// Installs the settings for this process; the first call (or first use)
/// wins. Returns an error when they were already fixed to other values.
pub fn install(s: Settings) -> Result<(), String> {
    let now = SETTINGS.get_or_init(|| s.clone());
    if *now == s {
        Ok(())
    } else {
        Err(format!("settings already fixed to {now:?}"))
    }
}

/// Reads the settings from the environment and installs them (for `wrk`,
/// `flw` and the gateway at start).
pub fn init_from_env() -> Result<&'static Settings, String> {
    let s = Settings::from_env()?;
    install(s)?;
    Ok(settings())
}

/// The settings in force. Never installed: the environment's, or the
/// defaults if it holds a bad value (the tools check it at start).
pub fn settings() -> &'static Settings {
    SETTINGS.get_or_init(|| Settings::from_env().unwrap_or_default())
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
