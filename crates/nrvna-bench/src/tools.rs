//! The binaries under test and how they are spawned: their location next to
//! this executable, a clean `NRVNA_*` environment per scenario, `wrk` as a
//! child process, `nrvnad stop`, and fresh temporary workspaces.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{bail, Context, Result};

/// Environment variables a scenario sets for the processes it spawns.
pub type Env = Vec<(String, String)>;

/// Builds an [`Env`] from literal pairs.
pub fn env(pairs: &[(&str, &str)]) -> Env {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

/// The release binaries, found next to this executable.
#[derive(Clone, Debug)]
pub struct Bins {
    pub nrvnad: PathBuf,
    pub wrk: PathBuf,
    pub flw: PathBuf,
    /// This executable (re-executed for the queue scenario's fsync=0 run).
    pub me: PathBuf,
}

impl Bins {
    pub fn locate() -> Result<Bins> {
        let me = std::env::current_exe().context("finding this executable")?;
        let bins = Bins {
            nrvnad: me.with_file_name("nrvnad"),
            wrk: me.with_file_name("wrk"),
            flw: me.with_file_name("flw"),
            me: me.clone(),
        };
        for b in [&bins.nrvnad, &bins.wrk, &bins.flw] {
            if !b.is_file() {
                bail!(
                    "{} is missing; build every binary with: cargo build --release --workspace",
                    b.display()
                );
            }
        }
        Ok(bins)
    }
}

/// A command for `bin` whose environment has none of the caller's
/// `NRVNA_*` variables, only the ones in `env`.
pub fn command(bin: &Path, env: &Env) -> Command {
    let mut c = Command::new(bin);
    for (k, _) in std::env::vars_os() {
        if k.as_bytes().starts_with(b"NRVNA_") {
            c.env_remove(&k);
        }
    }
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

/// Runs `wrk WS ARGS...` and returns the job id it printed.
pub fn wrk(bins: &Bins, ws: &Path, args: &[&str], env: &Env) -> Result<String> {
    let out = command(&bins.wrk, env)
        .arg(ws)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("spawning wrk")?;
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if !out.status.success() || id.is_empty() {
        bail!(
            "wrk {} exited with {}: {}",
            ws.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(id)
}

/// Runs `nrvnad stop WS`.
pub fn stop_daemon(bins: &Bins, ws: &Path) -> Result<()> {
    let out = command(&bins.nrvnad, &Env::new())
        .arg("stop")
        .arg(ws)
        .stdin(Stdio::null())
        .output()
        .context("spawning nrvnad stop")?;
    if !out.status.success() {
        bail!(
            "nrvnad stop {} exited with {}: {}",
            ws.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempWs {
    path: PathBuf,
}

impl TempWs {
    pub fn new(tag: &str) -> Result<TempWs> {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("nrvna-bench-{}-{n}-{tag}", std::process::id()));
        if path.exists() {
            std::fs::remove_dir_all(&path).with_context(|| format!("removing stale {}", path.display()))?;
        }
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(TempWs { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Keeps the directory (for the caller to remove later) and returns it.
    pub fn keep(mut self) -> PathBuf {
        std::mem::take(&mut self.path)
    }
}

impl Drop for TempWs {
    fn drop(&mut self) {
        if self.path.as_os_str().is_empty() {
            return;
        }
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Shell-style quoting of one word, for printing commands.
pub fn quote(w: &OsStr) -> String {
    let s = w.to_string_lossy();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./=,:+".contains(&b)) {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}
