//! A response's durable record, `WS/api/responses/<resp-id>.json`: what
//! its job cannot hold (the input items as given, instructions, metadata,
//! text.format, store and background flags, previous_response_id, model,
//! created_at), written atomically before the job is published. The job
//! is the rest: its state is the response's status, its result the output.

use std::path::PathBuf;

use nrvna_core::fsio::read_optional;
use nrvna_core::{JobId, Workspace};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The prefix of a response id; the rest is its job's id.
pub const PREFIX: &str = "resp_";

/// The largest record read (input items may carry images inline).
const MAX_RECORD_BYTES: u64 = 256 << 20;

/// One response as asked for. Keys it does not know are kept.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// `resp_<job id>`.
    pub id: String,
    pub created_at: i64,
    /// The model as the request named it.
    pub model: String,
    /// The input items, each with its `id` (`msg_<job>_<n>`), in OpenAI's
    /// shape (`{type: message, role, content: [input_text|input_image]}`).
    pub input: Vec<Value>,
    #[serde(default)]
    pub instructions: Option<String>,
    /// An object of strings, or null.
    #[serde(default)]
    pub metadata: Value,
    /// `{format: {type: text|json_object|json_schema, ...}}`.
    #[serde(default = "text_format")]
    pub text: Value,
    #[serde(default = "yes")]
    pub store: bool,
    #[serde(default)]
    pub background: bool,
    #[serde(default)]
    pub previous_response_id: Option<String>,
    #[serde(default)]
    pub max_output_tokens: Option<u64>,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub top_p: Option<f64>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

fn yes() -> bool {
    true
}

/// The default `text` config: plain text.
pub fn text_format() -> Value {
    serde_json::json!({"format": {"type": "text"}})
}

impl Record {
    /// The job that answers this response.
    pub fn job(&self) -> Option<JobId> {
        job_of(&self.id)
    }
}

/// The job of response id `id`; `None` for anything that is not
/// `resp_<job id>` (so that no other name reaches a path).
pub fn job_of(id: &str) -> Option<JobId> {
    JobId::parse(id.strip_prefix(PREFIX)?).ok()
}

/// The response id of job `id`.
pub fn response_id(id: &JobId) -> String {
    format!("{PREFIX}{id}")
}

/// Where the records live.
#[derive(Clone, Debug)]
pub struct Records {
    ws: Workspace,
    dir: PathBuf,
}

impl Records {
    pub fn new(ws: &Workspace) -> Records {
        Records {
            ws: ws.clone(),
            dir: ws.root().join("api").join("responses"),
        }
    }

    /// Reads response `id`'s record; `Ok(None)` when there is none (or the
    /// id is no response id).
    pub fn read(&self, id: &str) -> Result<Option<Record>, String> {
        if job_of(id).is_none() {
            return Ok(None);
        }
        let path = self.dir.join(format!("{id}.json"));
        let bytes = match read_optional(&path, MAX_RECORD_BYTES) {
            Ok(Some(b)) => b,
            Ok(None) => return Ok(None),
            Err(e) => return Err(format!("reading {}: {e}", path.display())),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| format!("{} is not a response record: {e}", path.display()))
    }

    /// Writes the record atomically (write, fsync, rename, fsync the dir).
    pub fn write(&self, rec: &Record) -> Result<(), String> {
        if job_of(&rec.id).is_none() {
            return Err(format!("{:?} is not a response id", rec.id));
        }
        std::fs::create_dir_all(&self.dir).map_err(|e| format!("creating {}: {e}", self.dir.display()))?;
        let mut bytes = serde_json::to_vec_pretty(rec).map_err(|e| format!("encoding response {}: {e}", rec.id))?;
        bytes.push(b'\n');
        let name = format!("{}.json", rec.id);
        self.ws
            .io()
            .write_atomic(&self.dir, &name, &bytes)
            .map_err(|e| format!("writing {}: {e}", self.dir.join(&name).display()))
    }

    /// Removes response `id`'s record; true when there was one.
    pub fn remove(&self, id: &str) -> Result<bool, String> {
        if job_of(id).is_none() {
            return Ok(false);
        }
        let path = self.dir.join(format!("{id}.json"));
        match std::fs::remove_file(&path) {
            Ok(()) => {
                let _ = self.ws.io().sync_dir(&self.dir);
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(format!("removing {}: {e}", path.display())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_resp_and_a_job_id_names_a_record() {
        let id = JobId::parse("00000000000000000001_12_000003").unwrap();
        assert_eq!(job_of(&response_id(&id)), Some(id));
        for bad in [
            "resp_../x",
            "resp_",
            "00000000000000000001_12_000003",
            "resp_1__2",
            "resp_a",
        ] {
            assert_eq!(job_of(bad), None, "{bad}");
        }
    }

    #[test]
    fn records_round_trip_and_keep_unknown_keys() {
        let d = tempfile::tempdir().unwrap();
        let ws = Workspace::create(d.path().join("ws")).unwrap();
        let recs = Records::new(&ws);
        let mut rec: Record = serde_json::from_value(serde_json::json!({
            "id": "resp_1_2_3", "created_at": 5, "model": "m", "input": [], "future_key": [1]
        }))
        .unwrap();
        assert!(rec.store && !rec.background);
        assert_eq!(rec.text, text_format());
        rec.instructions = Some("be brief".into());
        recs.write(&rec).unwrap();
        let back = recs.read("resp_1_2_3").unwrap().unwrap();
        assert_eq!(back, rec);
        assert_eq!(back.extra["future_key"], serde_json::json!([1]));
        assert!(recs.remove("resp_1_2_3").unwrap());
        assert_eq!(recs.read("resp_1_2_3").unwrap(), None);
        assert!(!recs.remove("resp_1_2_3").unwrap());
        assert_eq!(recs.read("resp_../../etc").unwrap(), None);
    }
}
