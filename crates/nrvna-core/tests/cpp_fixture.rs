//! A workspace laid out by the C++ nrvna tools (tests/fixtures/cpp-workspace)
//! must keep parsing: this freezes the on-disk format of docs/FORMAT.md.

use std::path::Path;

use nrvna_core::{JobId, JobType, State, Workspace};

fn fixture() -> Workspace {
    Workspace::open(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cpp-workspace"))
        .expect("fixture workspace")
}

#[test]
fn a_cpp_workspace_lists_and_reads_like_ours() {
    let ws = fixture();
    let done = JobId::parse("01764164852123456_4242_000001").unwrap();
    let failed = JobId::parse("01764164852123457_4242_000002").unwrap();
    let queued = JobId::parse("01764164852123458_4242_000003").unwrap();
    assert_eq!(ws.locate(&done), Some(State::Done));
    assert_eq!(ws.locate(&failed), Some(State::Failed));
    assert_eq!(ws.locate(&queued), Some(State::Ready));
    assert_eq!(
        ws.list(State::Processing).unwrap(),
        Vec::<JobId>::new(),
        "dot files are not jobs"
    );

    let j = ws.job(&done).unwrap();
    let m = j.meta().unwrap().unwrap();
    assert_eq!(m.tags, ["math", "demo-1"]);
    assert_eq!(m.duration_s, Some(1.33));
    assert_eq!(m.extra("cpp_worker").unwrap(), "Worker-2", "unknown keys survive");
    assert_eq!(
        j.primary_artifact().map(nrvna_core::files::Artifact::file_name),
        Some("result.txt")
    );
    let s = j.summary();
    assert_eq!(s["status"], "done");
    assert_eq!(s["artifact_kind"], "result", "the contract's word, as the C++ flw says");
    assert_eq!(s["result"], std::fs::read_to_string(j.dir.join("result.txt")).unwrap());
    assert_eq!(s["artifacts"], serde_json::json!(["result.txt"]));

    let f = ws.job(&failed).unwrap();
    let fm = f.meta().unwrap().unwrap();
    assert_eq!(fm.mode, Some(JobType::Vision));
    assert_eq!(fm.parent, Some(done.clone()));
    assert_eq!(fm.recovery_attempts, 1);
    assert_eq!(f.error().as_deref(), Some("no vision projector loaded"));

    let q = ws.job(&queued).unwrap().meta().unwrap().unwrap();
    assert_eq!(q.mode, Some(JobType::Embed));
}

/// meta.json as the C++ daemon writes it at finish (nlohmann `dump(2)`, keys
/// sorted, unknown keys dropped): the contract's `flw --json` object comes
/// out whole, and a batch job keeps its request in batch.json.
#[test]
fn jobs_finished_by_a_cpp_daemon_give_the_contract_object() {
    let ws = fixture();
    let batch = JobId::parse("01764164852123459_4242_000004").unwrap();
    let j = ws.job(&batch).unwrap();
    let s = j.summary();
    let path = std::path::absolute(j.dir.join("result.txt")).unwrap();
    assert_eq!(
        s,
        serde_json::json!({
            "id": batch.as_str(), "status": "done", "mode": "text",
            "submitted_at": "2025-11-26T13:48:00.000000Z", "completed_at": "2025-11-26T13:48:02.500000Z",
            "duration_s": 2.5, "output_format": "json_schema", "tags": ["batch_01764164852000000_77_000001"],
            "artifacts": ["result.txt"], "artifact": "result.txt", "artifact_kind": "result",
            "artifact_path": path.to_str().unwrap(), "result": "{\"name\": \"Ada\"}",
            "custom_id": "person-1",
        })
    );
    assert_eq!(
        j.meta().unwrap().unwrap().extra("custom_id"),
        None,
        "the C++ daemon dropped it"
    );
    assert_eq!(
        j.batch_request().unwrap(),
        Some(nrvna_core::BatchRequest {
            custom_id: "person-1".into(),
            line: 1
        })
    );

    let failed = JobId::parse("01764164852123460_4242_000005").unwrap();
    let s = ws.job(&failed).unwrap().summary();
    assert_eq!(s["status"], "failed");
    assert_eq!(s["error"], "Generation timed out");
    assert_eq!(s["partial"], "The first line\nand the second");
    assert_eq!(s["artifacts"], serde_json::json!(["error.txt", "response.txt"]));
    assert_eq!(ws.job(&failed).unwrap().batch_request(), Ok(None));
}
