//! OpenAI's Responses API (`/v1/responses`) over the queue: a response is
//! a job (`resp_<job id>`), with a durable record of what the job cannot
//! hold written before it is published. Its status is the job's state, its
//! stream events a pure function of the record and the job's files, so a
//! background response survives restarts of the gateway and the daemon
//! and its stream resumes from any event.

pub mod events;
pub mod http;
pub mod object;
pub mod record;
pub mod request;

pub use http::{cancel, create, delete, input_items, retrieve};
