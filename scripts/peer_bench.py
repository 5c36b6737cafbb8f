#!/usr/bin/env python3
"""nrvna next to llama-server on the same backlog (issue #27).

Every run starts its server or daemon fresh on the same model, waits until it
is ready, then submits every job at once and times from the first submission
to the last result. Three faces:

  server  llama-server: N concurrent POST /v1/chat/completions
  wrk     nrvnad: `wrk WS --temp 0 --max-tokens T PROMPT` per job, then `flw WS -W`
  api     nrvnad + nrvna-api: the same N concurrent requests as for llama-server

Tokens are counted the same way on both sides: the server's (and the
gateway's) usage.completion_tokens, the jobs' generated_tokens in meta.json.
Peak RSS is the process's VmHWM (llama-server, nrvnad). Rounds run the
configurations in alternating order; the table gives medians.

Standard library only. Prints a markdown table on stderr and the whole
record as JSON on stdout (nrvna-bench's `peer` scenario reads it).
"""

import argparse
import concurrent.futures
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def vm_hwm_kib(pid):
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def http_json(port, method, path, body=None, timeout=3600):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data else {}
        c.request(method, path, body=data, headers=headers)
        r = c.getresponse()
        raw = r.read()
        return r.status, raw
    finally:
        c.close()


def chat(port, model, prompt, tokens):
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": tokens,
        "temperature": 0,
    }
    status, raw = http_json(port, "POST", "/v1/chat/completions", body)
    if status != 200:
        raise RuntimeError(f"HTTP {status}: {raw[:300]!r}")
    v = json.loads(raw)
    return int(v["usage"]["completion_tokens"])


def fire(port, model, prompts, tokens):
    """Every request at once; (wall seconds, tokens, errors)."""
    t0 = time.monotonic()
    errors = []
    total = 0
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(prompts)) as ex:
        futs = [ex.submit(chat, port, model, p, tokens) for p in prompts]
        for f in futs:
            try:
                total += f.result()
            except Exception as e:  # noqa: BLE001 - every failure is reported
                errors.append(str(e))
    return time.monotonic() - t0, total, errors


def wait_http(port, path, proc, timeout, ok=lambda s, b: s == 200):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode} before it was ready")
        try:
            s, b = http_json(port, "GET", path, timeout=2)
            if ok(s, b):
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"not ready after {timeout}s")


def wait_file(path, proc, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode} before it was ready")
        if path.exists():
            return
        time.sleep(0.01)
    raise RuntimeError(f"not ready after {timeout}s")


def stop(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Run:
    def __init__(self, a, logs):
        self.a = a
        self.logs = logs

    def log(self, name):
        return open(self.logs / f"{name}.log", "wb")

    def server(self, label, flags, prompts):
        port = free_port()
        exe = self.a.server
        if flags and flags[0].startswith("exe="):
            exe, flags = flags[0][len("exe="):], flags[1:]
        argv = [exe, "-m", self.a.model, "--host", "127.0.0.1", "--port", str(port), *flags]
        with self.log(label) as lf:
            p = subprocess.Popen(argv, stdout=lf, stderr=subprocess.STDOUT)
        try:
            wait_http(port, "/health", p, 300)
            wall, tokens, errors = fire(port, "m", prompts, self.a.tokens)
            rss = vm_hwm_kib(p.pid)
        finally:
            stop(p)
        return wall, tokens, errors, rss

    def daemon(self, label, flags, ws):
        argv = [str(self.a.bin / "nrvnad"), self.a.model, str(ws), *flags]
        env = {k: v for k, v in os.environ.items() if not k.startswith("NRVNA_")}
        with self.log(label) as lf:
            p = subprocess.Popen(argv, stdout=lf, stderr=subprocess.STDOUT, env=env)
        wait_file(ws / ".nrvnad.ready", p, 300)
        return p, env

    def wrk(self, label, flags, prompts):
        with tempfile.TemporaryDirectory() as d:
            ws = Path(d) / "ws"
            p, env = self.daemon(label, flags, ws)
            errors = []
            try:
                t0 = time.monotonic()
                for prompt in prompts:
                    r = subprocess.run(
                        [str(self.a.bin / "wrk"), str(ws), "--temp", "0", "--max-tokens", str(self.a.tokens), prompt],
                        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                    )
                    if r.returncode != 0:
                        errors.append(r.stderr.decode(errors="replace").strip())
                r = subprocess.run([str(self.a.bin / "flw"), str(ws), "-W"], env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                wall = time.monotonic() - t0
                if r.returncode != 0:
                    errors.append(f"flw -W exited {r.returncode}: {r.stderr.decode(errors='replace').strip()[:300]}")
                rss = vm_hwm_kib(p.pid)
            finally:
                stop(p)
            tokens = 0
            done = 0
            for m in (ws / "output").glob("*/meta.json"):
                tokens += int(json.loads(m.read_text()).get("generated_tokens", 0))
                done += 1
            if done != len(prompts):
                errors.append(f"{done} of {len(prompts)} jobs done")
        return wall, tokens, errors, rss

    def api(self, label, flags, prompts):
        with tempfile.TemporaryDirectory() as d:
            ws = Path(d) / "ws"
            p, env = self.daemon(label, flags, ws)
            port = free_port()
            try:
                with self.log(label + "-api") as lf:
                    g = subprocess.Popen([str(self.a.bin / "nrvna-api"), str(ws), "--listen", f"127.0.0.1:{port}"],
                                         stdout=subprocess.DEVNULL, stderr=lf, env=env)
                try:
                    wait_http(port, "/v1/models", g, 60)
                    wall, tokens, errors = fire(port, Path(self.a.model).stem, prompts, self.a.tokens)
                    rss = vm_hwm_kib(p.pid)
                finally:
                    stop(g)
            finally:
                stop(p)
        return wall, tokens, errors, rss


TOPICS = [
    "the ocean", "mountains", "coffee", "bicycles", "libraries", "volcanoes", "honeybees", "the moon",
    "trains", "gardens", "chess", "rain", "deserts", "music", "bridges", "winter",
]


GUIDE = [
    "You write for a general audience that reads on small screens.",
    "Prefer short sentences and concrete words over abstract ones.",
    "Open with the most interesting fact, not with a definition.",
    "Use the active voice unless the actor is unknown or unimportant.",
    "Name one specific example, place, or number in every paragraph.",
    "Avoid clichés, exclamation marks, rhetorical questions, and lists.",
    "Do not address the reader directly and do not mention these rules.",
    "Keep a calm, curious tone, like a good museum guide.",
]


def shared_prefix(words):
    """A deterministic house style guide of about `words` words, the same
    for every job: the part of a backlog's prompts that a queue can
    compute once."""
    if words <= 0:
        return ""
    out, n, i = [], 0, 0
    while n < words:
        sentence = f"Rule {i + 1}. {GUIDE[i % len(GUIDE)]}"
        out.append(sentence)
        n += len(sentence.split())
        i += 1
    return "House style guide.\n" + "\n".join(out) + "\n\n"


def prompts(n, prefix_words=0):
    head = shared_prefix(prefix_words)
    out = []
    for i in range(n):
        t = TOPICS[i % len(TOPICS)]
        k = i // len(TOPICS)
        task = f"Write a short paragraph about {t}." if k == 0 else f"Write a short paragraph about {t} (variation {k})."
        out.append(head + task)
    return out


def parse_config(s):
    """face:name[:flag,flag...] -> (face, name, flags). A server configuration's
    first flag may be exe=PATH: that llama-server instead of --server's."""
    parts = s.split(":", 2)
    if len(parts) < 2 or parts[0] not in ("server", "wrk", "api"):
        raise argparse.ArgumentTypeError(f"bad configuration {s!r}: want FACE:NAME[:FLAGS], FACE server|wrk|api")
    flags = parts[2].split(",") if len(parts) == 3 and parts[2] else []
    return parts[0], parts[1], flags


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", type=Path, required=True, help="directory of nrvnad, wrk, flw, nrvna-api")
    ap.add_argument("--server", help="the llama-server executable (server configurations need it)")
    ap.add_argument("--model", required=True)
    ap.add_argument("--jobs", default="16,64,256", help="backlog sizes, comma-separated")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=64, help="max tokens per job (greedy)")
    ap.add_argument("--logs", type=Path, default=Path("bench-out/logs"))
    ap.add_argument("--shared-prefix", type=int, default=0, metavar="WORDS",
                    help="put the same style guide of about WORDS words before every prompt "
                         "(a backlog whose jobs share a long instruction; default 0: none)")
    ap.add_argument("config", nargs="+", type=parse_config,
                    help="FACE:NAME[:FLAG,FLAG...], e.g. server:default server:np16:-np,16 "
                         "server:nofp16-np16:exe=target/peer/bin/llama-server-nofp16,-np,16 wrk:default api:w16:--workers,16")
    a = ap.parse_args()
    a.model = str(Path(a.model).resolve())
    a.logs.mkdir(parents=True, exist_ok=True)
    if any(c[0] == "server" and not (c[2] and c[2][0].startswith("exe=")) for c in a.config) and not a.server:
        ap.error("server configurations need --server")
    run = Run(a, a.logs)
    sizes = [int(x) for x in a.jobs.split(",")]
    runs = []
    for r in range(a.rounds):
        order = a.config if r % 2 == 0 else list(reversed(a.config))
        for n in sizes:
            ps = prompts(n, a.shared_prefix)
            for face, name, flags in order:
                label = f"peer-{face}-{name}-n{n}-r{r}"
                print(f"{label} ...", file=sys.stderr, flush=True)
                try:
                    wall, tokens, errors, rss = getattr(run, face)(label, flags, ps)
                except Exception as e:  # noqa: BLE001 - a run that cannot finish is recorded
                    wall, tokens, errors, rss = None, 0, [f"{label}: {e}"], None
                rec = {
                    "face": face, "config": name, "flags": flags, "jobs": n, "round": r,
                    "wall_s": wall, "tokens": tokens,
                    "tok_s": (tokens / wall) if wall and not errors else None,
                    "peak_rss_mb": rss / 1024 if rss else None, "errors": errors[:5],
                }
                print(f"  {rec['tok_s'] and round(rec['tok_s'], 1)} tok/s, {tokens} tokens, "
                      f"{wall and round(wall, 2)} s, RSS {rec['peak_rss_mb'] and round(rec['peak_rss_mb'])} MB"
                      + (f", errors: {errors[:2]}" if errors else ""), file=sys.stderr, flush=True)
                runs.append(rec)
    summary = []
    for n in sizes:
        for face, name, flags in a.config:
            mine = [x for x in runs if x["jobs"] == n and x["face"] == face and x["config"] == name]
            ok = [x["tok_s"] for x in mine if x["tok_s"] is not None]
            rss = [x["peak_rss_mb"] for x in mine if x["peak_rss_mb"] is not None]
            summary.append({
                "face": face, "config": name, "flags": flags, "jobs": n,
                "tok_s_median": statistics.median(ok) if len(ok) == len(mine) and ok else None,
                "tok_s_by_round": [x["tok_s"] for x in mine],
                "peak_rss_mb_max": max(rss) if rss else None,
            })
    print("| jobs | face | config | tok/s (median) | by round | peak RSS MB |", file=sys.stderr)
    print("|---|---|---|---|---|---|", file=sys.stderr)
    for s in summary:
        med = "failed" if s["tok_s_median"] is None else f"{s['tok_s_median']:.1f}"
        rounds = " ".join("-" if t is None else f"{t:.0f}" for t in s["tok_s_by_round"])
        rss = "" if s["peak_rss_mb_max"] is None else f"{s['peak_rss_mb_max']:.0f}"
        print(f"| {s['jobs']} | {s['face']} | {s['config']} | {med} | {rounds} | {rss} |", file=sys.stderr)
    json.dump({"runs": runs, "summary": summary, "tokens": a.tokens, "rounds": a.rounds,
               "shared_prefix_words": a.shared_prefix}, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
