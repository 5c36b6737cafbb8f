//! SIGINT/SIGTERM through signal-hook: the first sets a flag and wakes the
//! main thread (a blocking wait, no polling); a second, while the flag is
//! set, exits the process at once with 130.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::flag;
use signal_hook::iterator::Signals;

/// The process's shutdown signals.
#[derive(Clone)]
pub struct Term {
    flag: Arc<AtomicBool>,
}

impl Term {
    /// Installs the handlers. `on_signal` is called (from a small thread of
    /// its own) for every signal that arrives.
    pub fn install(on_signal: impl Fn() + Send + 'static) -> std::io::Result<Term> {
        let term = Arc::new(AtomicBool::new(false));
        for sig in [SIGINT, SIGTERM] {
            // Order matters: the exit only fires when the flag is already
            // set, i.e. on the second signal. Only async-signal-safe calls.
            let second = term.clone();
            let exit_now = move || {
                if second.load(Ordering::SeqCst) {
                    const MSG: &[u8] = b"nrvnad: second signal, exiting now\n";
                    unsafe { libc::write(2, MSG.as_ptr().cast(), MSG.len()) };
                    signal_hook::low_level::exit(130);
                }
            };
            // SAFETY: the action only loads an atomic, write(2)s and _exit(2)s.
            unsafe { signal_hook::low_level::register(sig, exit_now)? };
            flag::register(sig, term.clone())?;
        }
        let mut signals = Signals::new([SIGINT, SIGTERM])?;
        std::thread::Builder::new().name("Signals".into()).spawn(move || {
            for _ in signals.forever() {
                on_signal();
            }
        })?;
        Ok(Term { flag: term })
    }

    /// Whether a shutdown signal arrived.
    pub fn received(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }
}

/// Forwards signals to the server's event channel.
pub fn to_events(tx: Sender<crate::events::Event>) -> impl Fn() + Send + 'static {
    let tx = std::sync::Mutex::new(tx);
    move || {
        if let Ok(tx) = tx.lock() {
            let _ = tx.send(crate::events::Event::Signal);
        }
    }
}
