"""Drives nrvna-api with the official `openai` package, one scenario per
subcommand (run by crates/nrvna-api/tests/clients.rs, which starts nrvnad
and nrvna-api). Environment: NRVNA_API_BASE (http://HOST:PORT/v1),
NRVNA_API_KEY, NRVNA_MODEL, NRVNA_WS (the workspace, to compare with the
jobs' files). Exits non-zero with a message on the first failed check."""

import concurrent.futures
import io
import json
import math
import os
import sys
import time

import urllib.error
import urllib.request

import openai

BASE = os.environ["NRVNA_API_BASE"]
KEY = os.environ["NRVNA_API_KEY"]
MODEL = os.environ["NRVNA_MODEL"]
WS = os.environ["NRVNA_WS"]

client = openai.OpenAI(base_url=BASE, api_key=KEY, max_retries=0, timeout=300)


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def job_file(job_id, name):
    with open(os.path.join(WS, "output", job_id, name), encoding="utf-8") as f:
        return f.read()


def chat():
    r = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello."}],
        max_tokens=8,
        temperature=0,
    )
    text = r.choices[0].message.content
    check(isinstance(text, str) and text.strip(), f"empty chat answer: {r}")
    check(r.object == "chat.completion", r.object)
    check(r.choices[0].finish_reason in ("stop", "length"), r.choices[0].finish_reason)
    check(r.usage.prompt_tokens > 0 and 1 <= r.usage.completion_tokens <= 8, f"usage {r.usage}")
    check(r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens, "total_tokens")
    job_id = r.id.removeprefix("chatcmpl-")
    check(job_file(job_id, "result.txt") == text, "the answer is not the job's result.txt")
    meta = json.loads(job_file(job_id, "meta.json"))
    check(meta["generated_tokens"] == r.usage.completion_tokens, "usage is not meta.json's")
    params = json.loads(job_file(job_id, "params.json"))
    check(params.get("priority") == "high" and params.get("max_tokens") == 8, f"params.json {params}")

    c = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=4, temperature=0)
    check(c.object == "text_completion" and c.choices[0].text, f"completion {c}")
    check(1 <= c.usage.completion_tokens <= 4, f"completion usage {c.usage}")
    models = client.models.list()
    check([m.id for m in models.data] == [MODEL], f"models {models}")
    print(f"chat ok: {text!r}; completion ok: {c.choices[0].text!r}")


def stream():
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Write a long story about a dragon."}],
        max_tokens=48,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    deltas, finish, usage, rid = [], None, None, None
    for chunk in stream:
        rid = chunk.id
        if chunk.usage:
            usage = chunk.usage
        for ch in chunk.choices:
            if ch.delta.content:
                deltas.append(ch.delta.content)
            if ch.finish_reason:
                finish = ch.finish_reason
    text = "".join(deltas)
    result = job_file(rid.removeprefix("chatcmpl-"), "result.txt")
    check(text == result, f"streamed {text!r} != result.txt {result!r}")
    check(len(deltas) >= 2, f"the answer came in {len(deltas)} delta(s); expected it to stream in pieces")
    check(finish in ("stop", "length"), f"finish_reason {finish}")
    check(usage is not None and usage.completion_tokens >= 1, f"usage {usage}")

    # A completion with a stop string streams the same text as its result.
    parts = []
    for chunk in client.completions.create(
        model=MODEL, prompt="1, 2, 3, 4,", max_tokens=24, temperature=0, stop=[" 9"], stream=True
    ):
        rid = chunk.id
        parts.extend(c.text for c in chunk.choices)
    result = job_file(rid.removeprefix("cmpl-"), "result.txt")
    check("".join(parts) == result, f"streamed {''.join(parts)!r} != result.txt {result!r}")
    print(f"stream ok: {len(deltas)} deltas, {text!r}")


def wait_cancelled(job_id, what):
    path = os.path.join(WS, "failed", job_id, "meta.json")
    t0 = time.time()
    while not os.path.exists(path):
        check(time.time() - t0 < 30, f"{what}: job {job_id} was not cancelled within 30 s")
        time.sleep(0.05)
    meta = json.loads(open(path, encoding="utf-8").read())
    check(meta.get("cancelled") is True, f"{what}: job {job_id} failed without being cancelled: {meta}")


def disconnect():
    long = [{"role": "user", "content": "Write a very long story about a dragon and a knight."}]
    # A streaming client that goes away after the first words.
    stream = client.chat.completions.create(model=MODEL, messages=long, max_tokens=2000, temperature=0.8,
                                            seed=1, stream=True)
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            break
    stream.close()
    wait_cancelled(chunk.id.removeprefix("chatcmpl-"), "closed stream")
    # A client that gives up waiting for a whole answer.
    before = set(os.listdir(os.path.join(WS, "processing"))) | set(os.listdir(os.path.join(WS, "input", "ready")))
    impatient = openai.OpenAI(base_url=BASE, api_key=KEY, max_retries=0, timeout=1.0)
    try:
        impatient.chat.completions.create(model=MODEL, messages=long, max_tokens=2000, temperature=0.8, seed=1)
        raise AssertionError("a 2000-token answer came back within 1 s")
    except openai.APITimeoutError:
        pass
    t0 = time.time()
    while True:
        jobs = (set(os.listdir(os.path.join(WS, "processing"))) | set(os.listdir(os.path.join(WS, "input", "ready")))
                | set(os.listdir(os.path.join(WS, "failed"))))
        new = [j for j in jobs - before if os.path.exists(os.path.join(WS, "failed", j))
               and json.load(open(os.path.join(WS, "failed", j, "meta.json"))).get("cancelled")]
        if new:
            break
        check(time.time() - t0 < 30, "the impatient client's job was not cancelled within 30 s")
        time.sleep(0.05)
    print("disconnect ok: both jobs cancelled")


def embeddings():
    texts = ["a cat sat on the mat", "a dog sat on the rug", "stock prices fell"]
    r = client.embeddings.create(model=MODEL, input=texts)  # base64 on the wire
    check(len(r.data) == 3 and [d.index for d in r.data] == [0, 1, 2], f"{len(r.data)} embeddings")
    dims = {len(d.embedding) for d in r.data}
    check(len(dims) == 1 and dims.pop() > 0, "embeddings of different sizes")
    for d in r.data:
        norm = math.sqrt(sum(x * x for x in d.embedding))
        check(abs(norm - 1) < 1e-3, f"norm {norm}")
    f = client.embeddings.create(model=MODEL, input=texts[0], encoding_format="float")
    check(max(abs(a - b) for a, b in zip(f.data[0].embedding, r.data[0].embedding)) < 1e-5, "float != base64")
    check(r.usage.prompt_tokens > 0, f"usage {r.usage}")
    print(f"embeddings ok: dim {len(r.data[0].embedding)}")


def schema():
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer"}},
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    r = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Invent a person. Answer in JSON."}],
        max_tokens=64,
        temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": schema}},
    )
    v = json.loads(r.choices[0].message.content)
    check(isinstance(v.get("name"), str) and isinstance(v.get("age"), int), f"not a person: {v}")
    job_id = r.id.removeprefix("chatcmpl-")
    check(json.loads(job_file(job_id, "schema.json")) == schema, "schema.json is not the request's schema")
    print(f"schema ok: {v}")


def upload_batch(n, max_tokens, tag):
    lines = [
        json.dumps({
            "custom_id": f"{tag}-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": MODEL, "messages": [{"role": "user", "content": f"Count to {i + 2}."}],
                     "max_tokens": max_tokens, "temperature": 0},
        })
        for i in range(n)
    ]
    f = client.files.create(file=(f"{tag}.jsonl", io.BytesIO("\n".join(lines).encode())), purpose="batch")
    check(f.id.startswith("file-") and f.bytes > 0, f"file {f}")
    check(client.files.content(f.id).text == "\n".join(lines), "the stored file differs from the upload")
    b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    # Created at once; the gateway validates and publishes it afterwards.
    check(b.status == "validating" and b.request_counts.total == 0, f"a new batch: {b}")
    return b


def wait_validated(batch_id, n):
    b = wait_batch(batch_id, ("in_progress", "finalizing", "completed"), timeout=30)
    check(b.request_counts.total == n, f"total {b.request_counts}")
    return b


def published(batch_id):
    """Whether every line of the batch is a job (the gateway's record says so)."""
    with open(os.path.join(WS, "api", "batches", f"{batch_id}.json"), encoding="utf-8") as f:
        return json.load(f).get("published") is True


def wait_batch(batch_id, until, timeout=240):
    t0 = time.time()
    while True:
        b = client.batches.retrieve(batch_id)
        if b.status in until:
            return b
        check(time.time() - t0 < timeout, f"batch {batch_id} still {b.status} after {timeout}s: {b.request_counts}")
        time.sleep(0.3)


def check_output(b, n, tag):
    check(b.request_counts.completed == n and b.request_counts.failed == 0, f"counts {b.request_counts}")
    check(b.completed_at and b.output_file_id and not b.error_file_id, f"batch {b}")
    out = [json.loads(line) for line in client.files.content(b.output_file_id).text.splitlines()]
    ids = [o["custom_id"] for o in out]
    check(ids == [f"{tag}-{i}" for i in range(n)], f"custom_ids {ids}")
    for o in out:
        body = o["response"]["body"]
        check(o["response"]["status_code"] == 200 and body["choices"][0]["message"]["content"], f"line {o}")
        jid = o["response"]["request_id"]
        check(body["choices"][0]["message"]["content"] == job_file(jid, "result.txt"), "output != result.txt")
        params = json.loads(job_file(jid, "params.json"))
        check(params.get("priority") == "low", f"batch job params {params}")


def batch():
    b = upload_batch(5, 8, "life")
    wait_validated(b.id, 5)
    b = wait_batch(b.id, ("completed",))
    check_output(b, 5, "life")
    page = client.batches.list(limit=1)
    check(len(page.data) == 1 and page.has_more in (True, False), f"page {page}")
    check(client.batches.list(limit=100).data[0].id == b.id, "the newest batch is not first")
    print(f"batch ok: {b.id} {b.request_counts}")


def batch_cancel():
    b = upload_batch(40, 16, "cancel")
    wait_validated(b.id, 40)
    c = client.batches.cancel(b.id)
    check(c.status in ("cancelling", "cancelled"), f"status after cancel: {c.status}")
    b = wait_batch(b.id, ("cancelled",), timeout=60)
    counts = b.request_counts
    check(counts.completed + counts.failed == 40 and counts.failed > 0, f"counts {counts}")
    errors = [json.loads(line) for line in client.files.content(b.error_file_id).text.splitlines()]
    check(len(errors) == counts.failed, f"{len(errors)} error lines for {counts.failed} failed")
    check(all(e["error"]["code"] in ("batch_cancelled", "job_failed") for e in errors), "error codes")
    check(any(e["error"]["code"] == "batch_cancelled" for e in errors), "no cancelled request")
    print(f"batch cancel ok: {counts}")


def batch_start():
    b = upload_batch(24, 16, "restart")
    wait_validated(b.id, 24)
    t0 = time.time()
    while not published(b.id):
        check(time.time() - t0 < 30, f"batch {b.id} is not published after 30s")
        time.sleep(0.1)
    print(b.id)


def batch_finish(batch_id):
    b = wait_batch(batch_id, ("completed",))
    check_output(b, 24, "restart")
    print(f"batch after restart ok: {b.request_counts}")


def concurrent_chats():
    def one(i):
        r = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": f"Say the number {i}."}], max_tokens=4, temperature=0
        )
        check(r.choices[0].message.content is not None and r.usage.completion_tokens >= 1, f"request {i}: {r}")
        return r.id

    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        ids = list(pool.map(one, range(32)))
    check(len(set(ids)) == 32, "duplicate completion ids")
    print("32 concurrent ok")


def expect_error(status, fn, param=None, code=None):
    try:
        fn()
    except openai.APIStatusError as e:
        check(e.status_code == status, f"expected {status}, got {e.status_code}: {e}")
        body = e.body if isinstance(e.body, dict) else {}
        check(isinstance(body.get("message"), str) and body["message"], f"no OpenAI error object: {e.body}")
        if param:
            check(body.get("param") == param, f"param {body.get('param')} != {param}")
        if code:
            check(body.get("code") == code, f"code {body.get('code')} != {code}")
        return
    raise AssertionError(f"expected an HTTP {status} error")


def bad():
    msgs = [{"role": "user", "content": "hi"}]
    req = urllib.request.Request(f"{BASE}/chat/completions", data=b'{"model": "x", "messages": [',
                                 headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    try:
        urllib.request.urlopen(req)
        raise AssertionError("malformed JSON was accepted")
    except urllib.error.HTTPError as e:
        body = e.read().decode()
        check(e.code == 400 and json.loads(body)["error"]["type"] == "invalid_request_error", body)
    for path, data, headers, status in [
        ("/files", b'{"purpose": "batch"}', {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}, 400),
        ("/models", None, {}, 401),
        ("/nowhere", None, {"Authorization": f"Bearer {KEY}"}, 404),
    ]:
        try:
            urllib.request.urlopen(urllib.request.Request(BASE + path, data=data, headers=headers))
            raise AssertionError(f"{path} answered 200")
        except urllib.error.HTTPError as e:
            body = json.loads(e.read().decode())
            check(e.code == status and body["error"]["message"], f"{path}: {e.code} {body}")
    try:
        urllib.request.urlopen(urllib.request.Request(BASE.removesuffix("/v1") + "/mcp", data=b"{}"))
        raise AssertionError("/mcp answered without a token")
    except urllib.error.HTTPError as e:
        check(e.code == 401, f"/mcp without a token: {e.code}")
    expect_error(400, lambda: client.chat.completions.create(model=MODEL, messages="hi"), param="messages")
    expect_error(400, lambda: client.chat.completions.create(model=MODEL, messages=msgs, temperature="hot"),
                 param="temperature")
    expect_error(400, lambda: client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=-1),
                 param="max_tokens")
    expect_error(400, lambda: client.embeddings.create(model=MODEL, input=[1, 2]), param="input")
    expect_error(404, lambda: client.chat.completions.create(model="gpt-9", messages=msgs), param="model",
                 code="model_not_found")
    huge = [{"role": "user", "content": "x" * (3 << 20)}]
    expect_error(413, lambda: client.chat.completions.create(model=MODEL, messages=huge))
    wrong = openai.OpenAI(base_url=BASE, api_key="wrong-key", max_retries=0)
    expect_error(401, lambda: wrong.models.list(), code="invalid_api_key")
    expect_error(404, lambda: client.batches.retrieve("batch_nope"))
    expect_error(400, lambda: client.files.create(file=("a.txt", io.BytesIO(b"x")), purpose="fine-tune"),
                 param="purpose")
    # The server goes on.
    r = client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=2)
    check(r.usage.completion_tokens >= 1, "a good request after the bad ones failed")
    print("bad requests ok")


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    fn = {"chat": chat, "stream": stream, "embeddings": embeddings, "schema": schema, "batch": batch,
          "batch-cancel": batch_cancel, "batch-start": batch_start, "batch-finish": batch_finish,
          "concurrent": concurrent_chats, "disconnect": disconnect, "bad": bad}[cmd]
    fn(*args)
