//! The nrvna workspace contract (`docs/FORMAT.md`): job ids, states and
//! their directories, meta.json, params.json, publishing, reading, waiting,
//! and the daemon's lifecycle files. `wrk` and `flw` need nothing else, so
//! this crate never links llama.cpp.

pub mod batch;
pub mod cancel;
#[cfg(feature = "cli")]
pub mod cli;
pub mod config;
pub mod dirsync;
pub mod fileio;
pub mod files;
pub mod fsio;
pub mod id;
pub mod job;
pub mod lifecycle;
pub mod limits;
pub mod live;
pub mod media;
pub mod members;
pub mod meta;
pub mod openai;
pub mod params;
pub mod retention;
pub mod spare;
pub mod standing;
pub mod state;
pub mod submit;
pub mod tally;
pub mod time;
pub mod wait;
pub mod webhook;
pub mod workspace;

pub use config::Settings;
pub use fileio::FileIo;
pub use id::JobId;
pub use job::JobView;
pub use meta::Meta;
pub use params::{Params, Priority};
pub use state::{JobType, State};
pub use submit::{BatchRequest, OutputFormat, Staged, Submission, SubmitError};
pub use workspace::{Moved, Workspace};
