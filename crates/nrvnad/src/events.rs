//! The events the main thread waits for, sent by the signal handlers, the
//! Scanner, the workers and the lease thread. This module imports nothing
//! of the crate, so every thread's module can depend on it.

/// What the main thread waits for.
#[derive(Debug)]
pub enum Event {
    /// SIGINT or SIGTERM.
    Signal,
    /// The Scanner finished a pass over `input/ready/`.
    Scanned,
    /// A worker finished with a job (whatever the outcome); sent before the
    /// pool counts the worker free, so a drain that finds the pool idle has
    /// every ended job counted.
    JobEnded { failed: bool },
    /// A worker was counted free in the pool after a job (wakes a drain
    /// to look at the pool again).
    Freed,
    /// A worker met an engine fault.
    Fault(String),
    /// A worker thread ended.
    WorkerExited,
    /// A shared member's lease thread finished a heartbeat and reaping pass.
    Lease,
    /// A model was loaded or unloaded (the daemon's info is rewritten).
    Models,
}
