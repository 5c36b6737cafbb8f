//! SIGINT/SIGTERM through signal-hook: the first sets a flag and wakes the
//! main thread (a blocking wait, no polling); a second, while the flag is
//! set, exits the process at once with 130 (from the handler, so it works
//! however stuck the rest of the daemon is). The second exits silently:
//! signal-hook's safe API cannot print from a handler, and the first
//! signal's log line says that a second exits at once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::flag;
use signal_hook::iterator::Signals;

/// The exit status when a second signal arrives during the shutdown.
pub const EXIT_ON_SECOND: i32 = 130;

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
            // Order matters: a signal runs its actions in the order they
            // were registered, so the exit (only when the flag is already
            // set) comes first and fires on the second signal, not the first.
            flag::register_conditional_shutdown(sig, EXIT_ON_SECOND, term.clone())?;
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
