//! A workspace laid out by the C++ nrvna tools (tests/fixtures/cpp-workspace)
//! must keep parsing: this freezes the on-disk format of shared/CONTRACT.md.

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
    assert_eq!(m.tags(), ["math", "demo-1"]);
    assert_eq!(m.duration_s(), Some(1.33));
    assert_eq!(m.get("cpp_worker").unwrap(), "Worker-2", "unknown keys survive");
    assert_eq!(j.primary_artifact(), Some("result.txt"));
    let s = j.summary();
    assert_eq!(s["status"], "done");
    assert_eq!(s["artifact_kind"], "text");

    let f = ws.job(&failed).unwrap();
    let fm = f.meta().unwrap().unwrap();
    assert_eq!(fm.mode(), Some(JobType::Vision));
    assert_eq!(fm.parent(), Some(done.clone()));
    assert_eq!(fm.recovery_attempts(), 1);
    assert_eq!(f.error().as_deref(), Some("no vision projector loaded"));

    let q = ws.job(&queued).unwrap().meta().unwrap().unwrap();
    assert_eq!(q.mode(), Some(JobType::Embed));
}
