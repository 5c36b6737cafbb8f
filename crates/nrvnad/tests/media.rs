//! Media jobs through the real pipeline: SmolLM2-135M with the vision
//! projector fixture (random weights, structurally a LLaVA projector;
//! scripts/fixtures.sh makes it), loaded by llama.cpp's mtmd. No part of
//! inference is mocked: the images are decoded, encoded and decoded into
//! the model's context, on both engines.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use common::*;
use serde_json::Value;

/// The vision projector fixture. Fails (never skips) when absent.
fn projector() -> PathBuf {
    let p = repo_root().join("models/fixtures/mmproj-vision-fixture.gguf");
    assert!(
        p.is_file(),
        "projector fixture missing: run scripts/fixtures.sh (expected {})",
        p.display()
    );
    p
}

/// A 24-bit BMP of `w` x `h` pixels from `px(x, y) -> [r, g, b]`.
fn bmp(w: u32, h: u32, px: impl Fn(u32, u32) -> [u8; 3]) -> Vec<u8> {
    let row = (w * 3).div_ceil(4) * 4;
    let size = 54 + row * h;
    let mut b = Vec::with_capacity(size as usize);
    b.extend_from_slice(b"BM");
    b.extend_from_slice(&size.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    b.extend_from_slice(&54u32.to_le_bytes());
    b.extend_from_slice(&40u32.to_le_bytes());
    b.extend_from_slice(&(w as i32).to_le_bytes());
    b.extend_from_slice(&(h as i32).to_le_bytes());
    b.extend_from_slice(&1u16.to_le_bytes());
    b.extend_from_slice(&24u16.to_le_bytes());
    b.extend_from_slice(&[0u8; 24]);
    for y in (0..h).rev() {
        let start = b.len();
        for x in 0..w {
            let [r, g, bl] = px(x, y);
            b.extend_from_slice(&[bl, g, r]);
        }
        b.resize(start + row as usize, 0);
    }
    b
}

/// Two images that differ everywhere: a red-green gradient, and a blue
/// checkerboard.
fn images(dir: &Path) -> (PathBuf, PathBuf) {
    let a = dir.join("gradient.bmp");
    let b = dir.join("checker.bmp");
    fs::write(&a, bmp(48, 48, |x, y| [(x * 5) as u8, (y * 5) as u8, 30])).unwrap();
    fs::write(
        &b,
        bmp(48, 48, |x, y| {
            if (x / 6 + y / 6) % 2 == 0 {
                [0, 0, 255]
            } else {
                [250, 250, 250]
            }
        }),
    )
    .unwrap();
    (a, b)
}

fn mmproj_args(p: &Path) -> Vec<String> {
    vec!["--mmproj".into(), p.display().to_string()]
}

#[test]
fn a_vision_job_runs_on_both_engines_and_its_image_reaches_the_model() {
    let proj = projector();
    for engine in ["batched", "per-job"] {
        let ws = TestWs::new();
        let (a, b) = images(ws.tmp());
        let (a, b) = (a.to_str().unwrap(), b.to_str().unwrap());
        let prompt = "Describe the picture.";
        let a1 = ws.submit(&["-i", a], prompt);
        let a2 = ws.submit(&["-i", a], prompt);
        let b1 = ws.submit(&["--image", b], prompt);
        // No prompt at all: the model gets only the image.
        let bare = ws.wrk(&["-i", b]);
        bare.expect_code(0, "wrk -i FILE without a prompt");
        let bare = bare.stdout.trim().to_owned();
        let text = ws.submit(&[], prompt);

        let mut args = mmproj_args(&proj);
        args.extend(["--engine".into(), engine.into()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let t0 = Instant::now();
        // One job at a time, each prompt decoded in full: the condition
        // under which the README promises that a replay gives the same
        // text (batch composition changes the rounding; on AMX kernels
        // enough to flip a greedy token).
        let mut d = ws.drain(
            &args,
            &[
                ("NRVNA_PREDICT", "16"),
                ("NRVNA_WORKERS", "1"),
                ("NRVNA_PREFIX_REUSE_MIN", "0"),
            ],
        );
        let wall = t0.elapsed();
        assert_eq!(d.code(), 0, "{engine}: the drain saw a failure");
        for id in [&a1, &a2, &b1, &bare, &text] {
            assert_eq!(ws.states_of(id), [DONE], "{engine}: job {id}");
        }
        let r = |id: &str| ws.read(DONE, id, "result.txt");
        assert!(!r(&a1).is_empty(), "{engine}: empty result");
        assert_eq!(
            r(&a1),
            r(&a2),
            "{engine}: same image, same greedy decoding, different text"
        );
        assert_ne!(r(&a1), r(&b1), "{engine}: a different image gave the same text");
        assert_ne!(
            r(&a1),
            r(&text),
            "{engine}: the image made no difference to the text job"
        );
        let m = ws.meta(DONE, &a1);
        assert_eq!(m["mode"], "vision");
        assert_eq!(m["status"], "done");
        assert_eq!(m["artifacts"], serde_json::json!(["result.txt"]));
        // 16 image tokens (32x32 pixels in 8x8 patches) plus the template's.
        let pt = m["prompt_tokens"].as_u64().unwrap();
        let tt = ws.meta(DONE, &text)["prompt_tokens"].as_u64().unwrap();
        assert!(pt >= tt + 16, "{engine}: prompt_tokens {pt} vs text-only {tt}");
        let durations: Vec<f64> = [&a1, &a2, &b1]
            .iter()
            .map(|id| ws.meta(DONE, id)["duration_s"].as_f64().unwrap())
            .collect();
        eprintln!(
            "vision on {engine}: 3 jobs of 16 tokens, duration_s {durations:?}, drain {:.2} s",
            wall.as_secs_f64()
        );
        let info = d.log_text();
        assert!(
            info.contains("loaded projector"),
            "{engine}: the log does not say the projector loaded"
        );
    }
}

fn vector(ws: &TestWs, id: &str) -> Vec<f64> {
    let v: Value = serde_json::from_str(&ws.read(DONE, id, "embedding.json")).unwrap();
    let vec: Vec<f64> = v["vector"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert_eq!(v["dim"].as_u64(), Some(vec.len() as u64));
    let norm: f64 = vec.iter().map(|x| x * x).sum::<f64>().sqrt();
    assert!((norm - 1.0).abs() < 1e-3, "not L2-normalised: {norm}");
    vec
}

#[test]
fn an_image_embedding_differs_from_the_text_alone_and_between_images() {
    let proj = projector();
    let ws = TestWs::new();
    let (a, b) = images(ws.tmp());
    let (a, b) = (a.to_str().unwrap(), b.to_str().unwrap());
    let text = ws.submit(&["--embed"], "a picture");
    let with_a = ws.submit(&["--embed", "-i", a], "a picture");
    let with_a2 = ws.submit(&["--embed", "-i", a], "a picture");
    let with_b = ws.submit(&["--embed", "-i", b], "a picture");
    let args = mmproj_args(&proj);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut d = ws.drain(&args, &[]);
    assert_eq!(d.code(), 0);
    let (t, va, va2, vb) = (
        vector(&ws, &text),
        vector(&ws, &with_a),
        vector(&ws, &with_a2),
        vector(&ws, &with_b),
    );
    assert_eq!(t.len(), 576, "SmolLM2's embedding width");
    assert_eq!(va.len(), t.len());
    let diff = |x: &[f64], y: &[f64]| x.iter().zip(y).map(|(p, q)| (p - q).abs()).sum::<f64>();
    assert!(diff(&t, &va) > 1e-3, "the image changed nothing");
    assert!(diff(&va, &vb) > 1e-3, "two images gave the same embedding");
    assert!(
        diff(&va, &va2) < 1e-4,
        "the same image and text gave different embeddings"
    );
    assert!(ws.job(DONE, &with_a).join("images/image_000000.bmp").is_file());
}

#[test]
fn bad_media_fail_their_own_job_and_the_daemon_goes_on() {
    let proj = projector();
    let ws = TestWs::new();
    ws.create_dirs();
    let (good, _) = images(ws.tmp());
    let good = fs::read(good).unwrap();
    let mut truncated_png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x20\0\0\0\x20\x08\x02".to_vec();
    truncated_png.truncate(20);
    let mut corrupt = good.clone();
    for b in corrupt[2..30].iter_mut() {
        *b = 0xee; // the BMP header says nonsense sizes
    }
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("1", Vec::new(), "is empty"),
        ("2", truncated_png, "could not be decoded"),
        ("3", corrupt, "could not be decoded"),
        ("4", b"plain text, not an image".to_vec(), "is not png, jpg"),
        ("5", vec![b'B'; 12_000], "larger than NRVNA_MAX_IMAGE_SIZE"),
    ];
    for (id, bytes, _) in &cases {
        let name = if *id == "5" {
            "image_000000.bmp"
        } else {
            "image_000000.png"
        };
        let mut bytes = bytes.clone();
        if *id == "5" {
            bytes[..2].copy_from_slice(b"BM");
        }
        ws.publish_job(
            id,
            &[
                ("prompt.txt", b"Describe."),
                ("type.txt", b"vision"),
                (format!("images/{name}").as_str(), &bytes[..]),
            ],
        );
    }
    // A symlink to a real image outside the job.
    let outside = ws.tmp().join("outside.bmp");
    fs::write(&outside, &good).unwrap();
    ws.make_job(WRITING, "6", &[("prompt.txt", b"Describe."), ("type.txt", b"vision")]);
    fs::create_dir(ws.job(WRITING, "6").join("images")).unwrap();
    std::os::unix::fs::symlink(&outside, ws.job(WRITING, "6").join("images/image_000000.bmp")).unwrap();
    fs::rename(ws.job(WRITING, "6"), ws.job(READY, "6")).unwrap();
    // A vision job with no images at all, and a good one last.
    ws.publish_job("7", &[("prompt.txt", b"Describe."), ("type.txt", b"vision")]);
    ws.publish_job(
        "8",
        &[
            ("prompt.txt", b"Describe."),
            ("type.txt", b"vision"),
            ("images/image_000000.bmp", &good),
        ],
    );

    let args = mmproj_args(&proj);
    let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
    args.extend(["--max-image-size", "10000"]);
    let mut d = ws.drain(&args, &[]);
    assert_eq!(d.code(), 1, "a drain that saw failures exits 1");
    for (id, _, reason) in &cases {
        assert_eq!(ws.states_of(id), [FAILED], "job {id}");
        let e = ws.read(FAILED, id, "error.txt");
        assert!(e.contains(reason), "job {id}: {e:?} should say {reason:?}");
    }
    assert!(ws.read(FAILED, "6", "error.txt").contains("symlink"));
    assert!(ws.read(FAILED, "7", "error.txt").contains("--image"));
    assert_eq!(ws.states_of("8"), [DONE], "the good job after the bad ones");
}

#[test]
fn a_vision_job_without_a_projector_fails_with_the_flag_to_give() {
    let ws = TestWs::new();
    let (a, _) = images(ws.tmp());
    let id = ws.submit(&["-i", a.to_str().unwrap()], "Describe.");
    let emb = ws.submit(&["--embed", "-i", a.to_str().unwrap()], "x");
    let text = ws.submit(&[], "Say hi.");
    for engine in ["batched", "per-job"] {
        for j in [&id, &emb] {
            if ws.is_in(FAILED, j) {
                fs::rename(ws.job(FAILED, j), ws.job(READY, j)).unwrap();
            }
        }
        let mut d = ws.drain(&["--engine", engine], &[]);
        assert_eq!(d.code(), 1);
        for j in [&id, &emb] {
            let e = ws.read(FAILED, j, "error.txt");
            assert!(e.contains("--mmproj"), "{engine}: {e:?}");
        }
        assert_eq!(ws.states_of(&text), [DONE]);
    }
}

#[test]
fn the_projector_beside_the_model_is_found_without_the_flag() {
    let proj = projector();
    let ws = TestWs::new();
    // A model directory holding the model and an mmproj named after it.
    let dir = ws.tmp().join("models");
    fs::create_dir(&dir).unwrap();
    let m = dir.join("SmolLM2-135M-Instruct.Q4_1.gguf");
    std::os::unix::fs::symlink(model(), &m).unwrap();
    std::os::unix::fs::symlink(&proj, dir.join("mmproj-SmolLM2-135M-Instruct.Q4_1.gguf")).unwrap();
    let (a, _) = images(ws.tmp());
    let id = ws.submit(&["-i", a.to_str().unwrap()], "Describe.");
    let mut cmd = clean_command(nrvnad_bin());
    cmd.arg(&m).arg(ws.path()).arg("--drain");
    for (k, v) in BASE_ENV {
        cmd.env(k, v);
    }
    let r = run(&mut cmd, JOB);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert_eq!(ws.states_of(&id), [DONE]);
}

/// A mono 16-bit PCM WAV of `secs` seconds: a tone at `hz`.
fn wav(secs: f32, hz: f32) -> Vec<u8> {
    let rate = 16_000u32;
    let n = (secs * rate as f32) as u32;
    let mut b = b"RIFF".to_vec();
    b.extend_from_slice(&(36 + n * 2).to_le_bytes());
    b.extend_from_slice(b"WAVEfmt ");
    b.extend_from_slice(&16u32.to_le_bytes());
    b.extend_from_slice(&1u16.to_le_bytes());
    b.extend_from_slice(&1u16.to_le_bytes());
    b.extend_from_slice(&rate.to_le_bytes());
    b.extend_from_slice(&(rate * 2).to_le_bytes());
    b.extend_from_slice(&2u16.to_le_bytes());
    b.extend_from_slice(&16u16.to_le_bytes());
    b.extend_from_slice(b"data");
    b.extend_from_slice(&(n * 2).to_le_bytes());
    for i in 0..n {
        let t = i as f32 / rate as f32;
        let s = (t * hz * std::f32::consts::TAU).sin() * 12_000.0;
        b.extend_from_slice(&(s as i16).to_le_bytes());
    }
    b
}

#[test]
fn a_speech_to_text_job_writes_its_transcript_on_both_engines() {
    let proj = repo_root().join("models/fixtures/mmproj-audio-fixture.gguf");
    assert!(
        proj.is_file(),
        "audio projector fixture missing: run scripts/fixtures.sh"
    );
    for engine in ["batched", "per-job"] {
        let ws = TestWs::new();
        let low = ws.tmp().join("low.wav");
        let high = ws.tmp().join("high.wav");
        fs::write(&low, wav(1.0, 220.0)).unwrap();
        fs::write(&high, wav(1.0, 3000.0)).unwrap();
        let a = ws.wrk(&["--audio", low.to_str().unwrap(), "--stt"]);
        a.expect_code(0, "wrk --audio --stt");
        let a = a.stdout.trim().to_owned();
        let b = ws.submit(&["--audio", high.to_str().unwrap(), "--stt"], "Transcribe this.");
        // A WAV cut off after its header: that job alone fails.
        let cut = ws.tmp().join("cut.wav");
        fs::write(&cut, &wav(1.0, 220.0)[..40]).unwrap();
        let c = ws.submit(&["--audio", cut.to_str().unwrap(), "--stt"], "Transcribe.");
        // A vision job on a daemon whose projector hears but does not see.
        let (img, _) = images(ws.tmp());
        let v = ws.submit(&["-i", img.to_str().unwrap()], "Describe.");
        let mut d = ws.drain(
            &["--mmproj", proj.to_str().unwrap(), "--engine", engine],
            &[("NRVNA_PREDICT", "12")],
        );
        assert_eq!(d.code(), 1, "{engine}: the vision job fails");
        for id in [&a, &b] {
            assert_eq!(ws.states_of(id), [DONE], "{engine}: {id}");
            let m = ws.meta(DONE, id);
            assert_eq!(m["mode"], "stt");
            assert_eq!(m["artifacts"], serde_json::json!(["transcript.txt"]));
            assert!(
                !ws.read(DONE, id, "transcript.txt").is_empty(),
                "{engine}: empty transcript"
            );
            assert!(!ws.job(DONE, id).join("result.txt").exists());
        }
        let e = ws.read(FAILED, &v, "error.txt");
        assert!(e.contains("no vision encoder"), "{engine}: {e:?}");
        let e = ws.read(FAILED, &c, "error.txt");
        assert!(
            e.contains("audio/audio_000000.wav could not be decoded"),
            "{engine}: {e:?}"
        );
        // flw prints the transcript, and --json carries it.
        let shown = ws.flw(&[&a], JOB);
        shown.expect_code(0, "flw WS ID of an stt job");
        assert_eq!(shown.stdout, ws.read(DONE, &a, "transcript.txt"));
        let j: Value = serde_json::from_str(ws.flw(&[&a, "--json"], JOB).stdout.trim()).unwrap();
        assert_eq!(j["artifact_kind"], "transcript");
        assert_eq!(j["transcript"].as_str(), Some(shown.stdout.as_str()));
    }
}

/// Media jobs exactly as the C++ `wrk` (956064f) writes them: `type.txt`
/// without a newline, the C++ meta.json, the source's extension kept on
/// the copies, an empty prompt beside images for an embedding and beside
/// audio for speech to text. Our daemon runs them, and its results are
/// what the C++ `flw` reads (`result.txt`, `transcript.txt`,
/// `embedding.json`, listed in `artifacts`).
#[test]
fn media_jobs_written_by_the_cpp_wrk_run_here() {
    let vision = projector();
    let audio = repo_root().join("models/fixtures/mmproj-audio-fixture.gguf");
    let png = fs::read(repo_root().join("models/fixtures/picture.png")).expect("run scripts/fixtures.sh");
    let meta = |mode: &str| format!("{{\"mode\": \"{mode}\", \"submitted_at\": \"2026-11-27T10:00:00.000000Z\"}}");
    let ws = TestWs::new();
    ws.create_dirs();
    let v = "01764164852123456_4242_000001";
    let e = "01764164852123456_4242_000002";
    ws.publish_job(
        v,
        &[
            ("prompt.txt", b"What colour is it?"),
            ("type.txt", b"vision"),
            ("meta.json", meta("vision").as_bytes()),
            ("images/image_000000.png", &png),
        ],
    );
    ws.publish_job(
        e,
        &[
            ("prompt.txt", b""),
            ("type.txt", b"embed"),
            ("meta.json", meta("embed").as_bytes()),
            ("images/image_000000.png", &png),
        ],
    );
    let mut d = ws.drain(&["--mmproj", vision.to_str().unwrap()], &[]);
    assert_eq!(d.code(), 0);
    assert!(!ws.read(DONE, v, "result.txt").is_empty());
    assert_eq!(ws.meta(DONE, v)["artifacts"], serde_json::json!(["result.txt"]));
    assert_eq!(ws.meta(DONE, v)["submitted_at"], "2026-11-27T10:00:00.000000Z");
    assert_eq!(vector(&ws, e).len(), 576);
    assert!(
        ws.job(DONE, v).join("images/image_000000.png").is_file(),
        "the job keeps its media"
    );

    let s = "01764164852123456_4242_000003";
    ws.publish_job(
        s,
        &[
            ("prompt.txt", b""),
            ("type.txt", b"stt"),
            ("meta.json", meta("stt").as_bytes()),
            ("audio/audio_000000.wav", &wav(0.5, 440.0)),
        ],
    );
    let mut d = ws.drain(&["--mmproj", audio.to_str().unwrap()], &[]);
    assert_eq!(d.code(), 0);
    // The projector is a random-weight fixture: what it makes the model
    // say is arbitrary (on an AMX host its first token is the end of the
    // text), so only the transcript's presence and record are checked here;
    // a_speech_to_text_job_writes_its_transcript_on_both_engines checks text.
    let _transcript = ws.read(DONE, s, "transcript.txt");
    let m = ws.meta(DONE, s);
    assert_eq!(m["artifacts"], serde_json::json!(["transcript.txt"]));
    assert_eq!(m["mode"], "stt");
    assert!(m["generated_tokens"].is_u64(), "{m}");
}

/// What our `wrk` writes for media jobs is what the C++ daemon reads:
/// `images/`/`audio/` of regular files in name order whose extensions the
/// C++ `wrk` also accepts, `type.txt` whose first line is the type, a
/// prompt wherever the C++ daemon needs one (it refuses an empty vision
/// prompt), and meta.json's `mode`.
#[test]
fn media_jobs_from_our_wrk_have_the_cpp_layout() {
    let ws = TestWs::new();
    let pic = repo_root().join("models/fixtures/picture.png");
    let pic = pic.to_str().expect("run scripts/fixtures.sh");
    let w = ws.tmp().join("memo.wav");
    fs::write(&w, wav(0.2, 440.0)).unwrap();
    let jobs = [
        (ws.submit(&["-i", pic, "-i", pic], "Compare."), "vision", "images", 2),
        (ws.wrk(&["-i", pic]).stdout.trim().to_owned(), "vision", "images", 1),
        (ws.submit(&["--embed", "-i", pic], "x"), "embed", "images", 1),
        (
            ws.wrk(&["--audio", w.to_str().unwrap(), "--stt"])
                .stdout
                .trim()
                .to_owned(),
            "stt",
            "audio",
            1,
        ),
    ];
    for (id, mode, dir, n) in jobs {
        let job = ws.job(READY, &id);
        assert_eq!(
            fs::read_to_string(job.join("type.txt")).unwrap().lines().next(),
            Some(mode)
        );
        assert_eq!(ws.meta(READY, &id)["mode"], mode);
        let mut names: Vec<String> = fs::read_dir(job.join(dir))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        let stem = if dir == "images" { "image" } else { "audio" };
        let ext = if dir == "images" { "png" } else { "wav" };
        let want: Vec<String> = (0..n).map(|i| format!("{stem}_{i:06}.{ext}")).collect();
        assert_eq!(names, want, "{mode}");
        if mode == "vision" {
            assert!(
                !ws.read(READY, &id, "prompt.txt").is_empty(),
                "the C++ daemon fails an empty vision prompt"
            );
        }
    }
}

/// The text-to-speech fixtures (scripts/fixtures.sh): an OuteTTS-style
/// model of the given layout version and the WavTokenizer decoder beside it.
fn tts_fixture(version: &str) -> (PathBuf, PathBuf) {
    let dir = repo_root().join("models/fixtures/tts");
    let model = dir.join(format!("OuteTTS-{version}-fixture.gguf"));
    let vocoder = dir.join("WavTokenizer-fixture.gguf");
    assert!(
        model.is_file() && vocoder.is_file(),
        "tts fixtures missing: run scripts/fixtures.sh (expected {} and {})",
        model.display(),
        vocoder.display()
    );
    (model, vocoder)
}

/// The samples of a 24 kHz mono 16-bit PCM WAV file, checking its header
/// field by field.
fn pcm16_mono_24k(bytes: &[u8]) -> Vec<i16> {
    let u32_at = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().unwrap());
    let u16_at = |i: usize| u16::from_le_bytes(bytes[i..i + 2].try_into().unwrap());
    assert!(bytes.len() >= 44, "a WAV file of {} bytes", bytes.len());
    assert_eq!(&bytes[0..4], b"RIFF");
    assert_eq!(u32_at(4) as usize, bytes.len() - 8, "RIFF size");
    assert_eq!(&bytes[8..12], b"WAVE");
    assert_eq!(&bytes[12..16], b"fmt ");
    assert_eq!(u32_at(16), 16, "fmt chunk size");
    assert_eq!(u16_at(20), 1, "PCM");
    assert_eq!(u16_at(22), 1, "mono");
    assert_eq!(u32_at(24), 24_000, "sample rate");
    assert_eq!(u32_at(28), 48_000, "byte rate");
    assert_eq!(u16_at(32), 2, "block align");
    assert_eq!(u16_at(34), 16, "bits per sample");
    assert_eq!(&bytes[36..40], b"data");
    assert_eq!(u32_at(40) as usize, bytes.len() - 44, "data size");
    bytes[44..]
        .chunks_exact(2)
        .map(|c| i16::from_le_bytes([c[0], c[1]]))
        .collect()
}

#[test]
fn a_tts_job_speaks_on_both_engines_and_longer_text_gives_longer_audio() {
    let (model, _) = tts_fixture("0.2");
    for engine in ["batched", "per-job"] {
        let ws = TestWs::new();
        let short = ws.submit(&["--tts", "--seed", "7"], "Hello world");
        let again = ws.submit(&["--tts", "--seed", "7"], "Hello world");
        let other = ws.submit(&["--tts", "--seed", "8"], "Hello world");
        // Nine words, numbers spelled out: more than NRVNA_MAX_CTX (2048)
        // holds after the voice prompt, so it is voiced in parts.
        let long = ws.submit(
            &["--tts", "--seed", "7"],
            "Hello world, it is 42 degrees and sunny today in Paris.",
        );
        // No --vocoder: the WavTokenizer file beside the OuteTTS model is found.
        let mut d = Daemon::spawn_model(
            &ws,
            model.as_os_str(),
            &["--drain", "--engine", engine, "--workers", "2"],
            &[],
        );
        d.wait_exit(JOB);
        assert_eq!(d.code(), 0, "{engine}: a tts job failed: {}", d.log_text());
        let log = d.log_text();
        assert!(log.contains("loaded vocoder"), "{engine}: {log}");
        assert!(log.contains("OuteTTS 0.2 layout"), "{engine}: {log}");
        assert!(log.contains("in a new part"), "{engine}: the long text was not split");
        let mut lens = Vec::new();
        for id in [&short, &again, &other, &long] {
            assert_eq!(ws.states_of(id), [DONE], "{engine}: {id}");
            let m = ws.meta(DONE, id);
            assert_eq!(m["mode"], "tts");
            assert_eq!(m["artifacts"], serde_json::json!(["audio.wav"]));
            assert_eq!(m["params"]["top_k"], 4);
            let bytes = fs::read(ws.job(DONE, id).join("audio.wav")).unwrap();
            let s = pcm16_mono_24k(&bytes);
            // 320 samples (one hop) per audio code; the first 250 ms are muted.
            assert_eq!(s.len() % 320, 0, "{engine}: {} samples", s.len());
            assert!(s.len() > 6000, "{engine}: {} samples", s.len());
            assert!(s[..6000].iter().all(|&x| x == 0), "{engine}: the onset is not muted");
            assert!(s[6000..].iter().any(|&x| x != 0), "{engine}: silence");
            lens.push(s.len());
        }
        let wav = |id: &str| fs::read(ws.job(DONE, id).join("audio.wav")).unwrap();
        assert_eq!(
            wav(&short),
            wav(&again),
            "{engine}: same text and seed, different audio"
        );
        assert_ne!(wav(&short), wav(&other), "{engine}: another seed gave the same audio");
        assert!(
            lens[3] > 3 * lens[0],
            "{engine}: 14 words gave {} samples, 2 words {}",
            lens[3],
            lens[0]
        );
        // flw writes the WAV's bytes to a pipe, and --json names the file.
        let shown = clean_command(flw_bin()).arg(ws.path()).arg(&short).output().unwrap();
        assert!(shown.status.success());
        assert_eq!(shown.stdout, wav(&short), "{engine}: flw WS ID of a tts job");
        let j: Value = serde_json::from_str(ws.flw(&[&short, "--json"], JOB).stdout.trim()).unwrap();
        assert!(
            j.to_string().contains("audio.wav"),
            "{engine}: flw --json does not name audio.wav: {j}"
        );
        eprintln!(
            "tts on {engine}: samples {lens:?}, duration_s {:?}",
            [&short, &long].map(|id| ws.meta(DONE, id)["duration_s"].as_f64().unwrap())
        );
    }
}

#[test]
fn the_outetts_0_3_layout_is_read_from_the_vocabulary() {
    let (model, vocoder) = tts_fixture("0.3");
    let ws = TestWs::new();
    let id = ws.submit(&["--tts", "--seed", "3"], "Ready? Yes, ready.");
    let mut d = Daemon::spawn_model(
        &ws,
        model.as_os_str(),
        &["--drain", "--vocoder", vocoder.to_str().unwrap()],
        &[],
    );
    d.wait_exit(JOB);
    assert_eq!(d.code(), 0, "{}", d.log_text());
    assert!(d.log_text().contains("OuteTTS 0.3 layout"), "{}", d.log_text());
    let s = pcm16_mono_24k(&fs::read(ws.job(DONE, &id).join("audio.wav")).unwrap());
    assert!(s.len() > 6000 && s.len() % 320 == 0, "{} samples", s.len());
}

#[test]
fn tts_failures_say_what_to_give_and_the_daemon_goes_on() {
    let (model, vocoder) = tts_fixture("0.2");
    let ws = TestWs::new();
    // A text model has no vocoder: the tts job fails, the text job runs.
    let tts = ws.submit(&["--tts"], "Hello");
    let text = ws.submit(&[], "Say hi.");
    let mut d = ws.drain(&[], &[]);
    assert_eq!(d.code(), 1);
    assert_eq!(ws.states_of(&text), [DONE]);
    let e = ws.read(FAILED, &tts, "error.txt");
    assert!(e.contains("--vocoder FILE") && e.contains("OuteTTS"), "{e}");

    // Nothing left to say once normalised: that job fails, the next speaks.
    let ws = TestWs::new();
    let empty = ws.submit(&["--tts"], "... !!! ???");
    let fine = ws.submit(&["--tts", "--seed", "1"], "fine");
    let mut d = Daemon::spawn_model(&ws, model.as_os_str(), &["--drain"], &[]);
    d.wait_exit(JOB);
    assert_eq!(d.code(), 1);
    assert!(ws.read(FAILED, &empty, "error.txt").contains("nothing to say"));
    assert_eq!(ws.states_of(&fine), [DONE]);

    // At start: a vocoder with a model that is not OuteTTS, and a vocoder
    // that is not a WavTokenizer decoder, are refused with the reason.
    let mut d = Daemon::spawn(&ws, &["--vocoder", vocoder.to_str().unwrap()], &[]);
    d.wait_exit(JOB);
    assert_ne!(d.code(), 0);
    assert!(d.log_text().contains("is not an OuteTTS model"), "{}", d.log_text());
    let mut d = Daemon::spawn_model(
        &ws,
        model.as_os_str(),
        &["--vocoder", common::model().to_str().unwrap()],
        &[],
    );
    d.wait_exit(JOB);
    assert_ne!(d.code(), 0);
    assert!(d.log_text().contains("not a WavTokenizer decoder"), "{}", d.log_text());
}
