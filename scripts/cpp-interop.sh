#!/usr/bin/env bash
# cpp-interop.sh: run the C++ nrvna tools and ours against each other on real
# workspaces with a real model, and report every check on stdout.
#
#   scripts/cpp-interop.sh CPP_BIN_DIR [RUST_BIN_DIR]
#
# CPP_BIN_DIR holds the C++ `wrk`, `flw` and `nrvnad`; RUST_BIN_DIR ours
# (default: target/release). stdout gets one line per check,
# `PASS name` / `FAIL name: reason` / `SKIP name: reason` (and `NOTE name: ...`
# for differences the contract allows); logs and diagnostics go to stderr.
# Exit status: 0 when nothing failed, 1 otherwise, 64 on bad usage.
# This is a manual tool: the test suite (scripts/test.sh, CI) does not run it,
# since it needs C++ binaries that are built outside this repository.
#
# Matrix, for each job type (text, embed, vision, embed+image, stt; tts when
# NRVNA_TTS_MODEL and NRVNA_TTS_VOCODER are set):
#   cpp2rust: C++ wrk submits, our nrvnad --drain runs it, both flw read it
#             (plain and --json);
#   rust2cpp: our wrk submits, the C++ nrvnad --drain runs it, both flw read it.
# Plus: what each wrk writes for the same job (files, type.txt, meta keys); a
# tts job on a daemon without a vocoder fails readably on both sides; each
# workspace, once the other side's daemon has run in it, is accepted by the
# other daemon; `nrvnad status`/`stop` of one side drive the other's daemon;
# `flw WS --json` counts agree.
#
# Environment: NRVNA_INTEROP_MODEL (default models/SmolLM2-135M-Instruct.Q4_1.gguf),
# NRVNA_INTEROP_FIXTURES (default models/fixtures, made by scripts/fixtures.sh:
# mmproj-vision-fixture.gguf, mmproj-audio-fixture.gguf, picture.png),
# NRVNA_TTS_MODEL + NRVNA_TTS_VOCODER (an OuteTTS GGUF and its WavTokenizer
# vocoder; our daemon gets `--vocoder`, the C++ one too), NRVNA_INTEROP_KEEP=1
# keeps the temp dir. Needs python3 (JSON checks, the test WAV).
#
# Building the C++ tools without building llama.cpp again (what this was
# first run with, C++ nrvna 956064f):
#   1. `git archive` the C++ nrvna sources into a directory (its llama.cpp
#      submodule is not needed).
#   2. Take llama.cpp from what our Rust build already has: the headers of the
#      crate llama-cpp-sys-2 (~/.cargo/registry/src/*/llama-cpp-sys-2-*/llama.cpp:
#      include/, ggml/include/, common/, vendor/, tools/mtmd/) and the static
#      libraries it built under target/release/build/llama-cpp-sys-2-*/out
#      (lib/libmtmd.a, libllama-common.a, libllama.a, libggml*.a, and
#      build/common/libllama-common-base.a, build/vendor/*/lib*.a); copy them
#      away first, a cargo build replaces them.
#   3. Compile every src/*.cpp and cli/*.cpp with
#      g++ -std=c++17 -O1 -include cstring -DNRVNA_VERSION='"0.1.1"' and the
#      include paths of step 2 (plus the sources' include/ and src/), and link
#      each cli/X.o with all src/*.o and the libraries inside
#      -Wl,--start-group ... -Wl,--end-group, then -lpthread -lgomp -ldl -lm.
#   4. The vendored llama.cpp is newer than the C++ code's pin (00fa7cb), so
#      three calls need a local edit in the extracted copy:
#      llama_sampler_init_penalties() takes llama_vocab_n_tokens(vocab) as a
#      new first argument (src/runner.cpp, src/runner_tts.cpp);
#      mtmd_helper_bitmap_init_from_file() takes a 4th argument,
#      mtmd_helper_init_opt_default() (src/runner.cpp, twice); and in
#      cli/wrk.cpp the schema is parsed with common_json::parse() instead of
#      nlohmann::ordered_json::parse() (json_schema_to_grammar takes a
#      common_json now). `-include cstring` stands in for a header the newer
#      llama.cpp no longer pulls in (strlen in src/runner_tts.cpp).
set -euo pipefail

usage() { echo "usage: $0 CPP_BIN_DIR [RUST_BIN_DIR]" >&2; exit 64; }
[ $# -ge 1 ] && [ $# -le 2 ] || usage
repo=$(cd "$(dirname "$0")/.." && pwd)
CPP=$(cd "$1" && pwd) || usage
RUST=$(cd "${2:-$repo/target/release}" && pwd) || usage
for b in wrk flw nrvnad; do
    for d in "$CPP" "$RUST"; do
        [ -x "$d/$b" ] || { echo "$d/$b: missing or not executable" >&2; exit 64; }
    done
done
command -v python3 >/dev/null || { echo "python3 is needed" >&2; exit 64; }

MODEL=${NRVNA_INTEROP_MODEL:-$repo/models/SmolLM2-135M-Instruct.Q4_1.gguf}
FIX=${NRVNA_INTEROP_FIXTURES:-$repo/models/fixtures}
VISION_MMPROJ=$FIX/mmproj-vision-fixture.gguf
AUDIO_MMPROJ=$FIX/mmproj-audio-fixture.gguf
IMAGE=$FIX/picture.png
TTS_MODEL=${NRVNA_TTS_MODEL:-}
TTS_VOCODER=${NRVNA_TTS_VOCODER:-}
DAEMON_TIMEOUT=${NRVNA_INTEROP_TIMEOUT:-600}
# Greedy sampling on both daemons (both read NRVNA_TEMP): with the random-weight
# fixture projectors a sampled run can end at once, and the C++ daemon fails an
# stt job whose transcript is empty ("Model produced no transcript content").
export NRVNA_TEMP=${NRVNA_TEMP:-0}
# Tokens a text/vision/stt job may generate (both daemons read NRVNA_PREDICT):
# greedy decoding on noise from the fixtures can run to the limit.
export NRVNA_PREDICT=${NRVNA_PREDICT:-128}
# Code tokens a tts job may generate (NRVNA_PREDICT, read by both daemons, for
# the tts run only): a random-weight fixture never stops by itself.
TTS_PREDICT=${NRVNA_TTS_PREDICT:-512}
for f in "$MODEL" "$VISION_MMPROJ" "$AUDIO_MMPROJ" "$IMAGE"; do
    [ -f "$f" ] || { echo "$f: missing (scripts/fetch-model.sh, scripts/fixtures.sh)" >&2; exit 64; }
done

TMP=$(mktemp -d "${TMPDIR:-/tmp}/nrvna-interop.XXXXXX")
bg_pids=()
cleanup() {
    local p
    for p in "${bg_pids[@]}"; do kill "$p" 2>/dev/null || true; done
    if [ "${NRVNA_INTEROP_KEEP:-0}" = 1 ]; then echo "kept $TMP" >&2; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
echo "temp dir $TMP; C++ $CPP; ours $RUST; model $MODEL" >&2

fails=0
pass() { echo "PASS $1"; }
fail() { echo "FAIL $1: $2"; fails=$((fails + 1)); }
skip() { echo "SKIP $1: $2"; }
note() { echo "NOTE $1: $2"; }

bin() { # bin SIDE TOOL -> path
    case $1 in cpp) echo "$CPP/$2" ;; rust) echo "$RUST/$2" ;; esac
}

# A 1 s, 16 kHz mono 16-bit WAV (a 440 Hz tone), for the stt jobs.
WAV=$TMP/tone.wav
python3 - "$WAV" <<'EOF'
import math, struct, sys
rate, n = 16000, 16000
pcm = b"".join(struct.pack("<h", int(12000 * math.sin(2 * math.pi * 440 * i / rate))) for i in range(n))
hdr = b"RIFF" + struct.pack("<I", 36 + len(pcm)) + b"WAVEfmt " + struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16) + b"data" + struct.pack("<I", len(pcm))
open(sys.argv[1], "wb").write(hdr + pcm)
EOF

# ---------------------------------------------------------------- helpers

# submit SIDE WS TYPE -> prints the job id; the wrk arguments for each type.
submit() {
    local side=$1 ws=$2 type=$3 w
    w=$(bin "$side" wrk)
    case $type in
        text) "$w" "$ws" "What is the capital of France?" ;;
        embed) "$w" "$ws" --embed "the quick brown fox" ;;
        vision) "$w" "$ws" "Describe this picture." -i "$IMAGE" ;;
        embed_image) "$w" "$ws" --embed -i "$IMAGE" "a small picture" ;;
        stt) "$w" "$ws" --audio "$WAV" --stt ;;
        tts) "$w" "$ws" --tts "Hello from nrvna." ;;
        *) echo "unknown type $type" >&2; return 1 ;;
    esac
}

# The artifact and flw --json content key and kind each type must produce.
artifact_of() {
    case $1 in
        text | vision) echo result.txt ;;
        embed | embed_image) echo embedding.json ;;
        stt) echo transcript.txt ;;
        tts) echo audio.wav ;;
    esac
}
mode_of() {
    case $1 in embed_image) echo embed ;; *) echo "$1" ;; esac
}

# run_daemon SIDE LOG MODEL WS [extra args...]: nrvnad --drain, one worker.
run_daemon() {
    local side=$1 log=$2 model=$3 ws=$4 rc=0
    shift 4
    echo "+ $side nrvnad $model $ws $* -w 1 --drain" >&2
    timeout "$DAEMON_TIMEOUT" nice -n 5 "$(bin "$side" nrvnad)" "$model" "$ws" "$@" -w 1 --drain >"$log" 2>&1 || rc=$?
    return $rc
}

# where WS ID -> state dir name (ready, processing, output, failed, missing)
where() {
    local d
    for d in input/ready processing output failed input/writing; do
        [ -d "$1/$d/$2" ] && { echo "${d#input/}"; return; }
    done
    echo missing
}

# pyjson CHECK ARGS...: JSON checks in python; prints a reason and exits 1 on
# a mismatch.
pyjson() {
    python3 - "$@" <<'EOF'
import json, math, os, sys
check = sys.argv[1]
def die(msg):
    print(msg); sys.exit(1)
def load(path):
    with open(path, "rb") as f:
        data = f.read()
    try:
        return json.loads(data)
    except Exception as e:
        die(f"{path}: not JSON ({e}): {data[:200]!r}")
if check == "meta_done":          # meta.json ARTIFACT MODE SUBMITTED_AT
    path, artifact, mode, submitted = sys.argv[2:6]
    m = load(path)
    if not isinstance(m, dict): die("meta.json is not an object")
    errs = []
    if m.get("status") != "done": errs.append(f"status={m.get('status')!r}")
    if m.get("mode") != mode: errs.append(f"mode={m.get('mode')!r} (want {mode!r})")
    if not isinstance(m.get("artifacts"), list) or artifact not in m["artifacts"]:
        errs.append(f"artifacts={m.get('artifacts')!r} (want {artifact!r} in it)")
    if submitted and m.get("submitted_at") != submitted:
        errs.append(f"submitted_at={m.get('submitted_at')!r} (was {submitted!r})")
    for k in ("completed_at",):
        if not isinstance(m.get(k), str) or not m[k].endswith("Z"): errs.append(f"{k}={m.get(k)!r}")
    if not isinstance(m.get("duration_s"), (int, float)): errs.append(f"duration_s={m.get('duration_s')!r}")
    if errs: die("; ".join(errs))
elif check == "meta_field":       # meta.json KEY -> prints value
    m = load(sys.argv[2]); v = m.get(sys.argv[3], "")
    print(v if isinstance(v, str) else json.dumps(v))
elif check == "embedding":        # embedding.json
    e = load(sys.argv[2])
    if not isinstance(e, dict) or not isinstance(e.get("vector"), list): die("no vector")
    v = e["vector"]
    if e.get("dim") != len(v): die(f"dim={e.get('dim')} but {len(v)} values")
    n = math.sqrt(sum(x * x for x in v))
    if not (abs(n - 1) < 1e-3): die(f"L2 norm {n:.6f}, not 1")
elif check == "flw_json":         # FILE ID TYPE-MODE ARTIFACT OUTDIR
    path, jid, mode, artifact, outdir = sys.argv[2:7]
    with open(path) as f:
        lines = [l for l in f.read().split("\n") if l]
    if len(lines) != 1: die(f"{len(lines)} lines, want 1 JSON object")
    o = json.loads(lines[0])
    kind, key = {"result.txt": ("result", "result"), "transcript.txt": ("transcript", "transcript"),
                 "embedding.json": ("embedding", "embedding"), "audio.wav": ("audio", "audio_path")}[artifact]
    apath = os.path.join(outdir, artifact)
    errs = []
    want = {"id": jid, "status": "done", "mode": mode, "artifact_kind": kind, "artifact_path": apath}
    for k, v in want.items():
        if o.get(k) != v: errs.append(f"{k}={o.get(k)!r} (want {v!r})")
    for k in ("submitted_at", "completed_at", "duration_s", "artifacts"):
        if k not in o: errs.append(f"no {k}")
    if key not in o:
        errs.append(f"no {key}")
    elif key in ("result", "transcript"):
        with open(apath, encoding="utf-8", errors="replace") as f:
            if o[key] != f.read(): errs.append(f"{key} differs from {artifact}")
    elif key == "embedding":
        if o[key] != load(apath): errs.append("embedding differs from embedding.json")
    elif key == "audio_path":
        if o[key] != apath: errs.append(f"audio_path={o[key]!r}")
    if errs: die("; ".join(errs))
elif check == "flw_json_failed":  # FILE ID
    path, jid = sys.argv[2:4]
    o = json.loads(open(path).read())
    errs = []
    if o.get("id") != jid: errs.append(f"id={o.get('id')!r}")
    if o.get("status") != "failed": errs.append(f"status={o.get('status')!r}")
    if not isinstance(o.get("error"), str) or not o["error"]: errs.append(f"error={o.get('error')!r}")
    if errs: die("; ".join(errs))
elif check == "keys_diff":        # A.json B.json -> prints the key differences
    a = json.loads(open(sys.argv[2]).read()); b = json.loads(open(sys.argv[3]).read())
    only_a = sorted(set(a) - set(b)); only_b = sorted(set(b) - set(a))
    diff = [k for k in sorted(set(a) & set(b)) if a[k] != b[k] and not
            (isinstance(a[k], (int, float)) and isinstance(b[k], (int, float)) and abs(a[k] - b[k]) < 0.006)]
    out = []
    if only_a: out.append("only ours: " + ",".join(only_a))
    if only_b: out.append("only C++: " + ",".join(only_b))
    if diff: out.append("values differ: " + ",".join(diff))
    print("; ".join(out))
elif check == "counts":           # A.json B.json
    a = json.loads(open(sys.argv[2]).read()); b = json.loads(open(sys.argv[3]).read())
    ks = ("queued", "running", "done", "failed")
    if any(a.get(k) != b.get(k) for k in ks):
        die("ours " + json.dumps({k: a.get(k) for k in ks}) + " C++ " + json.dumps({k: b.get(k) for k in ks}))
elif check == "meta_keys":        # A B -> prints symmetric difference of keys
    a = load(sys.argv[2]); b = load(sys.argv[3])
    print(",".join(sorted(set(a) ^ set(b))))
EOF
}

# check_done NAME WS ID TYPE SUBMITTED_AT: the daemon's output for one job,
# then both flw, plain and --json, and what they agree on.
check_done() {
    local name=$1 ws=$2 id=$3 type=$4 submitted=$5 state artifact mode out why
    artifact=$(artifact_of "$type")
    mode=$(mode_of "$type")
    state=$(where "$ws" "$id")
    if [ "$state" != output ]; then
        why="job is in $state/"
        [ -f "$ws/failed/$id/error.txt" ] && why="$why: $(head -c 300 "$ws/failed/$id/error.txt")"
        fail "$name.done" "$why"
        return
    fi
    out=$ws/output/$id
    pass "$name.done"
    if [ -f "$out/$artifact" ]; then pass "$name.artifact"
    else fail "$name.artifact" "no $artifact (has: $(cd "$out" && ls | tr '\n' ' '))"; fi
    if why=$(pyjson meta_done "$out/meta.json" "$artifact" "$mode" "$submitted"); then pass "$name.meta"
    else fail "$name.meta" "$why"; fi
    if [ "$artifact" = embedding.json ] && [ -f "$out/$artifact" ]; then
        if why=$(pyjson embedding "$out/$artifact"); then pass "$name.embedding"
        else fail "$name.embedding" "$why"; fi
    fi
    if [ "$artifact" = audio.wav ] && [ -f "$out/$artifact" ]; then
        if [ "$(head -c 4 "$out/$artifact")" = RIFF ]; then pass "$name.wav"
        else fail "$name.wav" "audio.wav does not start with RIFF"; fi
    fi

    # plain flw, both sides
    local side rc f
    for side in rust cpp; do
        f=$TMP/$name.flw.$side
        rc=0
        "$(bin "$side" flw)" "$ws" "$id" >"$f" 2>"$f.err" || rc=$?
        if [ $rc -ne 0 ]; then fail "$name.flw.$side" "exit $rc: $(head -c 200 "$f.err")"; continue; fi
        if [ "$artifact" = audio.wav ]; then
            if [ "$side" = cpp ]; then
                # C++ flw prints the absolute path of audio.wav
                if [ "$(cat "$f")" = "$(cd "$out" && pwd)/audio.wav" ]; then pass "$name.flw.$side"
                else fail "$name.flw.$side" "printed $(head -c 200 "$f" | tr '\n' ' '), not the audio.wav path"; fi
            elif cmp -s "$f" "$out/audio.wav"; then pass "$name.flw.$side"
            else fail "$name.flw.$side" "stdout (a file) is not audio.wav's bytes"; fi
            continue
        fi
        # the artifact as stored, or with a newline added when it lacks one
        # (the C++ flw adds it; ours prints the bytes as stored)
        if cmp -s "$f" "$out/$artifact"; then
            pass "$name.flw.$side"
        elif cmp -s "$f" <(cat "$out/$artifact"; echo); then
            pass "$name.flw.$side"
            echo "  $name.flw.$side: artifact + a newline" >&2
        else
            fail "$name.flw.$side" "stdout is not $artifact (+ newline): $(head -c 120 "$f" | tr '\n' ' ')"
        fi
    done
    if [ "$artifact" != audio.wav ] && [ -f "$TMP/$name.flw.rust" ] && [ -f "$TMP/$name.flw.cpp" ]; then
        if cmp -s "$TMP/$name.flw.rust" "$TMP/$name.flw.cpp"; then pass "$name.flw.same"
        elif cmp -s <(cat "$TMP/$name.flw.rust"; echo) "$TMP/$name.flw.cpp"; then
            note "$name.flw.same" "the C++ flw adds a trailing newline to $artifact, ours prints it as stored"
        else fail "$name.flw.same" "our flw and the C++ flw print different bytes"; fi
    fi

    # flw --json, both sides
    for side in rust cpp; do
        f=$TMP/$name.json.$side
        rc=0
        "$(bin "$side" flw)" "$ws" "$id" --json >"$f" 2>"$f.err" || rc=$?
        if [ $rc -ne 0 ]; then fail "$name.flw-json.$side" "exit $rc: $(head -c 200 "$f.err")"; continue; fi
        if why=$(pyjson flw_json "$f" "$id" "$mode" "$artifact" "$(cd "$out" && pwd)"); then pass "$name.flw-json.$side"
        else fail "$name.flw-json.$side" "$why"; fi
    done
    if [ -s "$TMP/$name.json.rust" ] && [ -s "$TMP/$name.json.cpp" ]; then
        why=$(pyjson keys_diff "$TMP/$name.json.rust" "$TMP/$name.json.cpp" 2>&1) || why="cannot compare: $why"
        if [ -z "$why" ]; then pass "$name.flw-json.same"
        else note "$name.flw-json.same" "$why"; fi
    fi
}

# check_failed NAME WS ID: a failed job as both flw see it.
check_failed() {
    local name=$1 ws=$2 id=$3 side rc f state
    state=$(where "$ws" "$id")
    if [ "$state" != failed ]; then fail "$name.failed" "job is in $state/, want failed/"; return; fi
    if [ -s "$ws/failed/$id/error.txt" ]; then pass "$name.failed"
    else fail "$name.failed" "failed/ without a non-empty error.txt"; fi
    echo "  $name error.txt: $(head -c 200 "$ws/failed/$id/error.txt")" >&2
    for side in rust cpp; do
        rc=0
        "$(bin "$side" flw)" "$ws" "$id" >/dev/null 2>&1 || rc=$?
        if [ $rc -eq 1 ]; then pass "$name.flw.$side"; else fail "$name.flw.$side" "exit $rc, want 1"; fi
        f=$TMP/$name.json.$side
        rc=0
        "$(bin "$side" flw)" "$ws" "$id" --json >"$f" 2>/dev/null || rc=$?
        if [ $rc -ne 1 ]; then fail "$name.flw-json.$side" "exit $rc, want 1"; continue; fi
        if why=$(pyjson flw_json_failed "$f" "$id"); then pass "$name.flw-json.$side"
        else fail "$name.flw-json.$side" "$why"; fi
    done
}

other() { case $1 in cpp) echo rust ;; rust) echo cpp ;; esac; }

# ---------------------------------------------------------------- 1. submit format
# The same job from both wrk: the same files, type.txt and meta.json keys.
for type in text embed vision embed_image stt tts; do
    name=submit.$type
    for side in rust cpp; do
        ws=$TMP/submit-$side
        if ! id=$(submit "$side" "$ws" "$type" 2>"$TMP/$name.$side.err"); then
            fail "$name" "$side wrk exit non-zero: $(head -c 200 "$TMP/$name.$side.err")"
            continue 2
        fi
        eval "sid_$side=\$id"
    done
    a=$TMP/submit-rust/input/ready/$sid_rust
    b=$TMP/submit-cpp/input/ready/$sid_cpp
    why=""
    la=$(cd "$a" && find . -type f | sort | tr '\n' ' ')
    lb=$(cd "$b" && find . -type f | sort | tr '\n' ' ')
    [ "$la" = "$lb" ] || why="files: ours [$la] C++ [$lb]"
    for f in prompt.txt type.txt; do
        if [ -f "$a/$f" ] && [ -f "$b/$f" ] && ! cmp -s "$a/$f" "$b/$f"; then
            d="$f: ours [$(od -An -c "$a/$f" | tr -s ' ' | head -c 60)] C++ [$(od -An -c "$b/$f" | tr -s ' ' | head -c 60)]"
            # readers take type.txt's first line: a trailing newline is no mismatch
            if [ "$f" = type.txt ] && [ "$(head -n 1 "$a/$f")" = "$(head -n 1 "$b/$f")" ]; then
                note "$name.type-bytes" "$d"
            else
                why="${why:+$why; }$d"
            fi
        fi
    done
    for f in $(cd "$b" && find images audio -type f 2>/dev/null); do
        cmp -s "$a/$f" "$b/$f" || why="${why:+$why; }$f differs"
    done
    k=$(pyjson meta_keys "$a/meta.json" "$b/meta.json") || k="unreadable meta.json"
    [ -z "$k" ] || why="${why:+$why; }meta.json keys not in both: $k"
    if [ -z "$why" ]; then pass "$name"; else fail "$name" "$why"; fi
done

# ---------------------------------------------------------------- 2. the matrix
# Direction SUB2DAEMON: SUB's wrk submits into fresh workspaces, DAEMON runs them.
# One workspace per projector: main (vision mmproj: text, embed, vision,
# embed_image, and a tts job that must fail without a vocoder), stt (audio
# mmproj), tts (TTS model + vocoder, when given).
declare -A JOBS SUBMITTED
run_direction() {
    local sub=$1 dmn=$2 dir=$3 ws type id rc tts_args
    local base=$TMP/$dir
    mkdir -p "$base"
    # main workspace
    ws=$base/main
    for type in text embed vision embed_image tts; do
        if id=$(submit "$sub" "$ws" "$type" 2>"$base/submit.$type.err"); then
            JOBS[$dir.$type]=$id
            SUBMITTED[$dir.$type]=$(pyjson meta_field "$ws/input/ready/$id/meta.json" submitted_at)
        else
            fail "$dir.$type.submit" "$sub wrk: $(head -c 200 "$base/submit.$type.err")"
        fi
    done
    rc=0
    run_daemon "$dmn" "$base/main.log" "$MODEL" "$ws" --mmproj "$VISION_MMPROJ" || rc=$?
    # one job (the tts one) fails on purpose: a drain that saw a failure exits 1
    if [ $rc -eq 0 ] || [ $rc -eq 1 ]; then pass "$dir.main.drain"
    else fail "$dir.main.drain" "$dmn nrvnad exit $rc (log $base/main.log): $(tail -n 3 "$base/main.log" | tr '\n' ' ' | head -c 300)"; fi
    for type in text embed vision embed_image; do
        [ -n "${JOBS[$dir.$type]:-}" ] || continue
        check_done "$dir.$type" "$ws" "${JOBS[$dir.$type]}" "$type" "${SUBMITTED[$dir.$type]}"
    done
    [ -n "${JOBS[$dir.tts]:-}" ] && check_failed "$dir.tts-no-vocoder" "$ws" "${JOBS[$dir.tts]}"

    # stt workspace
    ws=$base/stt
    if id=$(submit "$sub" "$ws" stt 2>"$base/submit.stt.err"); then
        JOBS[$dir.stt]=$id
        SUBMITTED[$dir.stt]=$(pyjson meta_field "$ws/input/ready/$id/meta.json" submitted_at)
        rc=0
        run_daemon "$dmn" "$base/stt.log" "$MODEL" "$ws" --mmproj "$AUDIO_MMPROJ" || rc=$?
        if [ $rc -eq 0 ]; then pass "$dir.stt.drain"
        else fail "$dir.stt.drain" "$dmn nrvnad exit $rc (log $base/stt.log): $(tail -n 3 "$base/stt.log" | tr '\n' ' ' | head -c 300)"; fi
        check_done "$dir.stt" "$ws" "$id" stt "${SUBMITTED[$dir.stt]}"
    else
        fail "$dir.stt.submit" "$sub wrk: $(head -c 200 "$base/submit.stt.err")"
    fi

    # tts workspace
    if [ -z "$TTS_MODEL" ] || [ -z "$TTS_VOCODER" ]; then
        skip "$dir.tts" "set NRVNA_TTS_MODEL and NRVNA_TTS_VOCODER to run it"
        return
    fi
    ws=$base/tts
    if id=$(submit "$sub" "$ws" tts 2>"$base/submit.tts.err"); then
        SUBMITTED[$dir.tts]=$(pyjson meta_field "$ws/input/ready/$id/meta.json" submitted_at)
        rc=0
        NRVNA_PREDICT=$TTS_PREDICT run_daemon "$dmn" "$base/tts.log" "$TTS_MODEL" "$ws" --vocoder "$TTS_VOCODER" || rc=$?
        if [ $rc -eq 0 ]; then pass "$dir.tts.drain"
        else fail "$dir.tts.drain" "$dmn nrvnad exit $rc (log $base/tts.log): $(tail -n 3 "$base/tts.log" | tr '\n' ' ' | head -c 300)"; fi
        check_done "$dir.tts" "$ws" "$id" tts "${SUBMITTED[$dir.tts]}"
    else
        fail "$dir.tts.submit" "$sub wrk: $(head -c 200 "$base/submit.tts.err")"
    fi
}

run_direction cpp rust cpp2rust
run_direction rust cpp rust2cpp

# ---------------------------------------------------------------- 3. workspace hand-over
# Each main workspace, created by one side's wrk and drained by the other
# side's daemon (whose lock/runtime files stay), takes a new job from the
# first side and is drained by the first side's daemon.
for pair in "cpp2rust cpp" "rust2cpp rust"; do
    set -- $pair
    dir=$1 side=$2
    ws=$TMP/$dir/main
    name=handover.$dir.$side-daemon
    if ! id=$(submit "$side" "$ws" text 2>"$TMP/$name.err"); then
        fail "$name" "$side wrk: $(head -c 200 "$TMP/$name.err")"; continue
    fi
    rc=0
    run_daemon "$side" "$TMP/$name.log" "$MODEL" "$ws" || rc=$?
    # the earlier tts job stays failed, so a drain that counts all failures may say 1
    if [ $rc -gt 1 ]; then fail "$name.drain" "$side nrvnad exit $rc: $(tail -n 3 "$TMP/$name.log" | tr '\n' ' ' | head -c 300)"
    else pass "$name.drain"; fi
    if [ "$(where "$ws" "$id")" = output ] && [ -f "$ws/output/$id/result.txt" ]; then pass "$name"
    else fail "$name" "new job is in $(where "$ws" "$id")/ $(cat "$ws/failed/$id/error.txt" 2>/dev/null | head -c 200)"; fi
    # the earlier jobs are untouched and still read the same
    for type in text embed; do
        jid=${JOBS[$dir.$type]:-}
        [ -n "$jid" ] || continue
        if [ "$(where "$ws" "$jid")" = output ]; then pass "$name.kept.$type"
        else fail "$name.kept.$type" "earlier job moved to $(where "$ws" "$jid")/"; fi
    done
    # workspace counts agree
    a=$TMP/$name.counts.rust b=$TMP/$name.counts.cpp
    "$RUST/flw" "$ws" --json >"$a" 2>/dev/null || true
    "$CPP/flw" "$ws" --json >"$b" 2>/dev/null || true
    if why=$(pyjson counts "$a" "$b" 2>&1); then pass "$name.counts"
    else fail "$name.counts" "$why"; fi
    # the idle barrier: C++ `flw WS -W` prints "idle (N done, M failed)" and
    # with --json the counts object, exit 1 when a job failed
    for j in "" --json; do
        ra=0 rb=0
        "$RUST/flw" "$ws" -W $j >"$a.W" 2>/dev/null || ra=$?
        "$CPP/flw" "$ws" -W $j >"$b.W" 2>/dev/null || rb=$?
        n=$name.wait-idle${j:+-json}
        if [ $ra -ne $rb ]; then fail "$n" "exit: ours $ra, C++ $rb"
        elif [ -n "$j" ]; then
            if why=$(pyjson counts "$a.W" "$b.W" 2>&1); then pass "$n"
            else fail "$n" "stdout: ours [$(head -c 120 "$a.W")] C++ [$(head -c 120 "$b.W")]"; fi
        elif cmp -s "$a.W" "$b.W"; then pass "$n"
        else fail "$n" "stdout: ours [$(head -c 120 "$a.W" | tr '\n' ' ')] C++ [$(head -c 120 "$b.W" | tr '\n' ' ')]"; fi
    done
done

# ---------------------------------------------------------------- 4. lifecycle across sides
# One side's daemon runs (not --drain); the other side's `nrvnad status`
# reports it ready and its `nrvnad stop` stops it.
for pair in "rust cpp" "cpp rust"; do
    set -- $pair
    dmn=$1 ctl=$2
    name=lifecycle.$dmn-daemon.$ctl-ctl
    ws=$TMP/life-$dmn
    "$(bin "$dmn" nrvnad)" "$MODEL" "$ws" -w 1 >"$TMP/$name.log" 2>&1 &
    pid=$!
    bg_pids+=("$pid")
    rc=2
    for _ in $(seq 1 240); do
        rc=0
        "$(bin "$ctl" nrvnad)" status "$ws" >/dev/null 2>&1 || rc=$?
        [ $rc -eq 0 ] && break
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.5
    done
    if [ $rc -eq 0 ]; then pass "$name.status"
    else fail "$name.status" "$ctl nrvnad status exit $rc while the $dmn daemon runs"; fi
    # a job while it runs
    id=$(submit "$ctl" "$ws" text 2>/dev/null) || id=""
    rc=1
    if [ -n "$id" ]; then
        rc=0
        timeout 300 "$(bin "$ctl" flw)" "$ws" "$id" -w >/dev/null 2>&1 || rc=$?
    fi
    if [ $rc -eq 0 ]; then pass "$name.job"; else fail "$name.job" "flw -w exit $rc"; fi
    rc=0
    timeout 60 "$(bin "$ctl" nrvnad)" stop "$ws" >/dev/null 2>"$TMP/$name.stop.err" || rc=$?
    sleep 0.5
    if [ $rc -eq 0 ] && ! kill -0 "$pid" 2>/dev/null; then pass "$name.stop"
    else fail "$name.stop" "$ctl nrvnad stop exit $rc, daemon $(kill -0 "$pid" 2>/dev/null && echo still running || echo gone): $(head -c 200 "$TMP/$name.stop.err")"; fi
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    rc=0
    "$(bin "$ctl" nrvnad)" status "$ws" >/dev/null 2>&1 || rc=$?
    if [ $rc -eq 1 ]; then pass "$name.status-after"; else fail "$name.status-after" "exit $rc, want 1 (not running)"; fi
done

echo "$fails check(s) failed" >&2
[ "$fails" -eq 0 ]
