"""nrvna-api benchmark (run by scripts/bench-api.sh, which starts nrvnad and
nrvna-api on a scratch workspace). Measures, on the same daemon:

  1. latency of a 1-token chat completion through the gateway (HTTP, one
     keep-alive connection) against `wrk WS --max-tokens 1 PROMPT | flw WS -w`,
     sequentially, N samples each, interleaved; the difference is what the
     gateway adds;
  2. requests/s of 1-token chat completions with 32 concurrent clients.

Standard library only (http.client), so the client's own cost is small.
Prints a markdown report on stdout."""

import http.client
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from urllib.parse import urlparse

BASE = os.environ["NRVNA_API_BASE"]  # http://127.0.0.1:PORT
KEY = os.environ.get("NRVNA_API_KEY", "")
WS = os.environ["NRVNA_WS"]
WRK = os.environ["NRVNA_WRK"]
FLW = os.environ["NRVNA_FLW"]
N = int(os.environ.get("BENCH_SAMPLES", "50"))
CLIENTS = int(os.environ.get("BENCH_CLIENTS", "32"))
PER_CLIENT = int(os.environ.get("BENCH_PER_CLIENT", "8"))
MODEL = os.environ.get("NRVNA_MODEL", "SmolLM2-135M-Instruct.Q4_1")
PROMPT = "Say hi."

u = urlparse(BASE)


def conn():
    return http.client.HTTPConnection(u.hostname, u.port, timeout=300)


def chat(c):
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 1})
    c.request("POST", "/v1/chat/completions", body,
              {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"})
    r = c.getresponse()
    data = r.read()
    if r.status != 200:
        raise RuntimeError(f"HTTP {r.status}: {data[:300]!r}")
    return json.loads(data)


def cli():
    p = subprocess.run(f"{WRK} {WS} --max-tokens 1 '{PROMPT}' | {FLW} {WS} -w", shell=True,
                       capture_output=True)
    if p.returncode != 0:
        raise RuntimeError(f"wrk | flw -w failed: {p.stderr!r}")


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q / 100 * (len(xs) - 1))))]


def row(name, xs):
    ms = [x * 1000 for x in xs]
    return (f"| {name} | {len(ms)} | {pct(ms, 50):.2f} | {pct(ms, 99):.2f} | {statistics.mean(ms):.2f} "
            f"| {min(ms):.2f} | {max(ms):.2f} |")


def main():
    c = conn()
    for _ in range(3):  # warm both paths
        chat(c)
        cli()
    api, shell = [], []
    for _ in range(N):
        t = time.perf_counter()
        chat(c)
        api.append(time.perf_counter() - t)
        t = time.perf_counter()
        cli()
        shell.append(time.perf_counter() - t)

    errors = []
    def client():
        cc = conn()
        for _ in range(PER_CLIENT):
            try:
                chat(cc)
            except Exception as e:  # counted and reported
                errors.append(repr(e))
    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t
    done = CLIENTS * PER_CLIENT - len(errors)

    print("Latency of a 1-token chat completion, sequential, same daemon, interleaved:\n")
    print("| path | n | p50 ms | p99 ms | mean ms | min ms | max ms |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    print(row("nrvna-api POST /v1/chat/completions", api))
    print(row("`wrk WS --max-tokens 1 PROMPT \\| flw WS -w`", shell))
    print(f"\nAdded by the gateway: p50 {1000 * (pct(api, 50) - pct(shell, 50)):+.2f} ms, "
          f"p99 {1000 * (pct(api, 99) - pct(shell, 99)):+.2f} ms\n")
    print(f"Throughput: {CLIENTS} concurrent clients x {PER_CLIENT} 1-token chat completions: "
          f"{done} ok, {len(errors)} failed, {wall:.2f} s wall, **{done / wall:.1f} requests/s**")
    if errors:
        print("\nerrors:", errors[:5])
        sys.exit(1)


main()
