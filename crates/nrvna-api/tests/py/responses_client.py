"""Drives nrvna-api's /v1/responses with the official `openai` package, one
scenario per subcommand (run by crates/nrvna-api/tests/responses.rs, which
starts nrvnad and nrvna-api). Environment: NRVNA_API_BASE
(http://HOST:PORT/v1), NRVNA_API_KEY, NRVNA_MODEL, NRVNA_WS (the workspace,
to compare with the jobs' files), NRVNA_PICTURE (an image fixture).
Exits non-zero with a message on the first failed check."""

import base64
import json
import os
import sys
import time

import jsonschema
import openai

BASE = os.environ["NRVNA_API_BASE"]
KEY = os.environ["NRVNA_API_KEY"]
MODEL = os.environ["NRVNA_MODEL"]
WS = os.environ["NRVNA_WS"]

client = openai.OpenAI(base_url=BASE, api_key=KEY, max_retries=0, timeout=300)


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def job_of(resp_id):
    check(resp_id.startswith("resp_"), f"not a response id: {resp_id}")
    return resp_id.removeprefix("resp_")


def job_dir(job):
    for state in ("output", "failed", "processing", "input/ready"):
        d = os.path.join(WS, state, job)
        if os.path.isdir(d):
            return d
    raise AssertionError(f"job {job} is in no state directory")


def job_file(resp_id, name):
    with open(os.path.join(job_dir(job_of(resp_id)), name), encoding="utf-8") as f:
        return f.read()


def meta(resp_id):
    return json.loads(job_file(resp_id, "meta.json"))


def params(resp_id):
    return json.loads(job_file(resp_id, "params.json"))


def wait_status(resp_id, statuses, timeout=120):
    deadline = time.time() + timeout
    while True:
        r = client.responses.retrieve(resp_id)
        if r.status in statuses:
            return r
        check(time.time() < deadline, f"{resp_id} still {r.status} after {timeout}s")
        time.sleep(0.1)


def sync():
    r = client.responses.create(
        model=MODEL, input="Say hello.", instructions="Be brief.", max_output_tokens=64, temperature=0
    )
    ending = "incomplete" if meta(r.id).get("finish_reason") == "length" else "completed"
    check(r.object == "response" and r.status == ending, f"status {r.status} ({ending} by meta.json): {r}")
    check(r.output_text, f"empty output_text: {r}")
    check(r.output[0].type == "message" and r.output[0].role == "assistant", f"output {r.output}")
    check(job_file(r.id, "result.txt") == r.output_text, "output_text is not the job's result.txt")
    m = meta(r.id)
    check(m["response_id"] == r.id and m["background"] is False, f"meta extras {m}")
    check(r.usage.output_tokens == m["generated_tokens"], f"usage {r.usage} vs meta {m}")
    check(r.usage.input_tokens == m["prompt_tokens"] and r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens, "usage totals")
    p = params(r.id)
    check(p.get("priority") == "high" and p.get("system") == "Be brief." and p.get("max_tokens") == 64, f"params {p}")
    check(job_file(r.id, "prompt.txt") == "Say hello.", "prompt.txt")
    again = client.responses.retrieve(r.id)
    check(again.status == r.status and again.output_text == r.output_text, "retrieve differs from create")
    check(r.instructions == "Be brief." and r.max_output_tokens == 64, f"echoed fields {r}")

    # store=false: answered, then forgotten.
    r = client.responses.create(model=MODEL, input="Hi", max_output_tokens=4, store=False)
    check(r.status in ("completed", "incomplete") and r.store is False, f"store=false {r}")
    try:
        client.responses.retrieve(r.id)
        check(False, "a store=false response was kept")
    except openai.NotFoundError:
        pass
    print(f"sync: {again.output_text!r}")


def collect(stream):
    evs = []
    for e in stream:
        evs.append(e.model_dump(mode="json"))
    return evs


def check_stream(evs, first_seq=0):
    seqs = [e["sequence_number"] for e in evs]
    check(seqs == list(range(first_seq, first_seq + len(evs))), f"sequence numbers {seqs}")
    return "".join(e["delta"] for e in evs if e["type"] == "response.output_text.delta")


def stream():
    evs = collect(
        client.responses.create(model=MODEL, input="Tell me a short story.", max_output_tokens=40, temperature=0, stream=True)
    )
    types = [e["type"] for e in evs]
    deltas = [e for e in types if e == "response.output_text.delta"]
    want = (
        ["response.created", "response.in_progress", "response.output_item.added", "response.content_part.added"]
        + deltas
        + ["response.output_text.done", "response.content_part.done", "response.output_item.done"]
    )
    check(types[:-1] == want, f"event order {types}")
    check(types[-1] in ("response.completed", "response.incomplete"), f"last event {types[-1]}")
    check(len(deltas) > 1, f"only {len(deltas)} deltas")
    joined = check_stream(evs)
    final = evs[-1]["response"]
    rid = final["id"]
    check(joined == job_file(rid, "result.txt"), "joined deltas are not result.txt")
    check(evs[-4]["text"] == joined, "output_text.done differs from the deltas")
    check(final["output"][0]["content"][0]["text"] == joined, "final response text")
    check(evs[0]["response"]["status"] == "in_progress", f"created status {evs[0]['response']['status']}")
    # The stream re-rendered from the stored response is the same, event by event.
    again = collect(client.responses.retrieve(rid, stream=True))
    check(again == evs, "the stream re-rendered from the workspace differs")
    tail = collect(client.responses.retrieve(rid, stream=True, starting_after=5))
    check(tail == evs[6:], "starting_after=5 is not the events after 5")
    print(f"stream: {len(evs)} events, {len(deltas)} deltas")


def background():
    r = client.responses.create(model=MODEL, input="Name three colors.", max_output_tokens=24, background=True)
    check(r.status == "queued" and r.background is True, f"background create {r.status}")
    m = meta(r.id)
    check(m["background"] is True and m["response_id"] == r.id, f"meta {m}")
    check(params(r.id).get("priority") == "normal", f"params {params(r.id)}")
    done = wait_status(r.id, ("completed", "incomplete"))
    check(done.output_text == job_file(r.id, "result.txt"), "polled output_text is not result.txt")
    # A background stream: created says queued; the deltas add up.
    evs = collect(client.responses.create(model=MODEL, input="Count to five.", max_output_tokens=24, background=True, stream=True))
    check(evs[0]["type"] == "response.created" and evs[0]["response"]["status"] == "queued", f"first {evs[0]}")
    joined = check_stream(evs)
    check(joined == job_file(evs[0]["response"]["id"], "result.txt"), "background stream deltas")
    # Cancelling a finished response answers it as it is.
    c = client.responses.cancel(r.id)
    check(c.status == done.status, f"cancel of a finished response changed it to {c.status}")
    # A running one cancelled: it stops, reads cancelled, and its stream
    # ends with response.failed carrying status cancelled.
    # The model may end its answer between the poll that saw in_progress
    # and the cancel; then the cancel must answer the finished response
    # as it is, and the test tries again with a new one.
    for attempt in range(1, 6):
        long = client.responses.create(
            model=MODEL, input="List the numbers from 1 to 100, one per line.", max_output_tokens=400, background=True
        )
        wait_status(long.id, ("in_progress",))
        c = client.responses.cancel(long.id)
        if c.status in ("cancelled", "in_progress"):
            break
        check(c.status in ("completed", "incomplete"), f"cancel of a running response answered {c.status}")
        after = client.responses.retrieve(long.id)
        check(after.status == c.status, f"cancel answered {c.status}, then the response read {after.status}")
        check(meta(long.id).get("cancelled") is None, f"a response that finished first was marked cancelled: {meta(long.id)}")
        print(f"background: attempt {attempt}: the response finished ({c.status}, {after.usage.output_tokens} tokens) before its cancel", file=sys.stderr)
    else:
        check(False, "five running responses all finished before their cancel")
    check(wait_status(long.id, ("cancelled", "completed", "incomplete")).status == "cancelled", "not cancelled")
    evs = collect(client.responses.retrieve(long.id, stream=True))
    check(evs[-1]["type"] == "response.failed" and evs[-1]["response"]["status"] == "cancelled", f"last {evs[-1]}")
    check_stream(evs)
    print(f"background: {done.output_text!r}; a running one cancelled after {sum(e['type'].endswith('delta') for e in evs)} deltas")


def chain():
    r1 = client.responses.create(model=MODEL, input="My name is Ada.", instructions="Answer in one line.", max_output_tokens=12, temperature=0)
    r2 = client.responses.create(model=MODEL, input="I live in Paris.", previous_response_id=r1.id, max_output_tokens=12, temperature=0)
    r3 = client.responses.create(model=MODEL, input="What is my name?", previous_response_id=r2.id, max_output_tokens=12, temperature=0)
    for r in (r1, r2, r3):
        check(r.status in ("completed", "incomplete"), f"{r.id} {r.status}")
    check(r3.previous_response_id == r2.id, "previous_response_id echoed")
    check("parent" not in meta(r1.id), "r1 has a parent")
    check(meta(r2.id)["parent"] == job_of(r1.id), f"r2 parent {meta(r2.id).get('parent')}")
    check(meta(r3.id)["parent"] == job_of(r2.id), f"r3 parent {meta(r3.id).get('parent')}")
    prompt = job_file(r3.id, "prompt.txt")
    parts = ["user: My name is Ada.", "assistant: " + r1.output_text, "user: I live in Paris.", "assistant: " + r2.output_text, "What is my name?"]
    at = 0
    for p in parts:
        i = prompt.find(p, at)
        check(i >= 0, f"r3's prompt lacks {p!r} after {at}: {prompt!r}")
        at = i + len(p)
    check(prompt.endswith("What is my name?"), f"r3's prompt ends {prompt[-40:]!r}")
    check("system" not in params(r3.id), "instructions were inherited")
    check(params(r1.id)["system"] == "Answer in one line.", "r1's instructions")
    print(f"chain: r3 answered {r3.output_text!r}")


def incomplete():
    r = client.responses.create(model=MODEL, input="Write a long essay about the sea.", max_output_tokens=3, temperature=0)
    check(r.status == "incomplete", f"status {r.status}")
    check(r.incomplete_details.reason == "max_output_tokens", f"incomplete_details {r.incomplete_details}")
    check(r.usage.output_tokens == 3 and meta(r.id)["finish_reason"] == "length", f"usage {r.usage}")
    check(r.output_text == job_file(r.id, "result.txt"), "incomplete output_text")
    print(f"incomplete: {r.output_text!r}")


def schema():
    s = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    r = client.responses.create(
        model=MODEL,
        input="Make up a person.",
        text={"format": {"type": "json_schema", "name": "person", "schema": s, "strict": True}},
        max_output_tokens=60,
        temperature=0,
    )
    check(r.status == "completed", f"status {r.status} {r.error}")
    jsonschema.validate(json.loads(r.output_text), s)
    check(json.loads(job_file(r.id, "schema.json")) == s, "the job's schema.json")
    check(r.text.format.type == "json_schema", f"text {r.text}")
    print(f"schema: {r.output_text!r}")


def items():
    r = client.responses.create(
        model=MODEL,
        input=[
            {"role": "user", "content": "Hello"},
            {"role": "assistant", "content": "Hi! How can I help?"},
            {"role": "user", "content": [{"type": "input_text", "text": "Say yes."}]},
        ],
        max_output_tokens=4,
    )
    page = client.responses.input_items.list(r.id)
    check([i.role for i in page.data] == ["user", "assistant", "user"], f"default order is desc: {page.data}")
    check(page.data[0].content[0].text == "Say yes." and not page.has_more, "items content")
    asc = client.responses.input_items.list(r.id, order="asc", limit=2)
    check([i.content[0].text for i in asc.data] == ["Hello", "Hi! How can I help?"] and asc.has_more, f"asc page {asc}")
    check(asc.first_id == asc.data[0].id and asc.last_id == asc.data[1].id, "first_id/last_id")
    rest = client.responses.input_items.list(r.id, order="asc", after=asc.last_id)
    check([i.content[0].text for i in rest.data] == ["Say yes."] and not rest.has_more, f"after {rest}")
    check(asc.data[1].content[0].type == "output_text", "an assistant item's text is output_text")

    client.responses.delete(r.id)
    for call in (lambda: client.responses.retrieve(r.id), lambda: client.responses.input_items.list(r.id)):
        try:
            call()
            check(False, "a deleted response answered")
        except openai.NotFoundError:
            pass
    try:
        client.responses.create(model=MODEL, input="x", previous_response_id=r.id)
        check(False, "a deleted previous response was found")
    except openai.NotFoundError as e:
        check(e.body.get("code") == "previous_response_not_found", f"error {e.body}")
    check(os.path.isdir(job_dir(job_of(r.id))), "the job of a deleted response stays in the workspace")
    print("items: listed, paged, deleted")


def bad():
    for kwargs, param in [
        (dict(input="x", background=True, store=False), "store"),
        (dict(input=[]), "input"),
        (dict(input=[{"role": "user", "content": [{"type": "input_image", "image_url": "https://example.com/a.png"}]}]), "input[0].content[0].image_url"),
    ]:
        try:
            client.responses.create(model=MODEL, **kwargs)
            check(False, f"{kwargs} was accepted")
        except openai.BadRequestError as e:
            check(e.body.get("param") == param, f"{kwargs}: param {e.body}")
    r = client.responses.create(model=MODEL, input="Hi", max_output_tokens=2)
    try:
        client.responses.cancel(r.id)
        check(False, "a non-background response was cancelled")
    except openai.BadRequestError:
        pass
    print("bad: refused")


def cancel_queued():
    """With no daemon yet: a background response stays queued until cancelled."""
    r = client.responses.create(model=MODEL, input="Never runs.", background=True)
    check(client.responses.retrieve(r.id).status == "queued", "not queued")
    c = client.responses.cancel(r.id)
    check(c.status == "cancelled", f"cancel answered {c.status}")
    check(client.responses.retrieve(r.id).status == "cancelled", "retrieve after cancel")
    check(os.path.isdir(os.path.join(WS, "failed", job_of(r.id))), "the cancelled job is not in failed/")
    evs = collect(client.responses.retrieve(r.id, stream=True))
    check([e["type"] for e in evs] == ["response.created", "response.failed"], f"events {evs}")
    check(evs[-1]["response"]["status"] == "cancelled", "the stream's last response")
    # Another one stays queued for the daemon started later (see wait_done).
    w = client.responses.create(model=MODEL, input="Say yes.", max_output_tokens=8, background=True)
    check(client.responses.retrieve(w.id).status == "queued", "not queued")
    print(w.id)


def wait_done(resp_id):
    """A background response created before any daemon ran completes once one does."""
    r = wait_status(resp_id, ("completed", "incomplete"))
    check(r.output_text == job_file(resp_id, "result.txt") and r.background, f"waited {r}")
    print(f"wait: {r.output_text!r}")


def resume_start(path):
    """A long background stream read for a few deltas; the events seen are
    saved to `path` for resume_finish (the test then kills the gateway)."""
    stream = client.responses.create(
        model=MODEL,
        input="List the numbers from 1 to 100, one per line.",
        max_output_tokens=200,
        temperature=0,
        background=True,
        stream=True,
    )
    evs = []
    for e in stream:
        evs.append(e.model_dump(mode="json"))
        if sum(x["type"] == "response.output_text.delta" for x in evs) >= 3:
            break
    check(evs[-1]["type"] == "response.output_text.delta", f"the stream ended early: {[e['type'] for e in evs]} {evs[-1]}")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(evs, f)
    print(evs[0]["response"]["id"])


def resume_finish(path):
    with open(path, encoding="utf-8") as f:
        seen = json.load(f)
    rid, last = seen[0]["response"]["id"], seen[-1]["sequence_number"]
    rest = collect(client.responses.retrieve(rid, stream=True, starting_after=last))
    check(rest and rest[0]["sequence_number"] == last + 1, f"resumed at {rest[:1]}")
    check_stream(seen + rest)
    joined = "".join(e["delta"] for e in seen + rest if e["type"] == "response.output_text.delta")
    final = client.responses.retrieve(rid)
    check(final.status in ("completed", "incomplete"), f"status {final.status}")
    check(joined == final.output_text == job_file(rid, "result.txt"), "resumed deltas do not join to the result")
    again = collect(client.responses.retrieve(rid, stream=True))
    check(again[: len(seen)] == seen, "the events seen before the kill are not the events rendered after it")
    print(f"resume: {len(seen)} events before the kill, {len(rest)} after; {len(joined)} chars")


def image():
    png = open(os.environ["NRVNA_PICTURE"], "rb").read()
    uri = "data:image/png;base64," + base64.b64encode(png).decode()
    r = client.responses.create(
        model=MODEL,
        input=[{"role": "user", "content": [{"type": "input_text", "text": "What is in the picture?"},
                                           {"type": "input_image", "image_url": uri}]}],
        max_output_tokens=8,
    )
    check(r.status in ("completed", "incomplete"), f"status {r.status} {r.error}")
    check(job_file(r.id, "type.txt").strip() == "vision", "not a vision job")
    with open(os.path.join(job_dir(job_of(r.id)), "images/image_000000.png"), "rb") as f:
        check(f.read() == png, "the job's image is not the one sent")
    f = client.files.create(file=("picture.png", png), purpose="vision")
    r = client.responses.create(
        model=MODEL,
        input=[{"role": "user", "content": [{"type": "input_image", "file_id": f.id}]}],
        max_output_tokens=4,
    )
    with open(os.path.join(job_dir(job_of(r.id)), "images/image_000000.png"), "rb") as g:
        check(g.read() == png, "the uploaded image is not the job's")
    items = client.responses.input_items.list(r.id)
    check(items.data[0].content[0].file_id == f.id, f"input item {items.data[0]}")
    print(f"image: {r.output_text!r}")


if __name__ == "__main__":
    name, args = sys.argv[1], sys.argv[2:]
    {
        "sync": sync,
        "stream": stream,
        "background": background,
        "chain": chain,
        "incomplete": incomplete,
        "schema": schema,
        "items": items,
        "bad": bad,
        "cancel-queued": cancel_queued,
        "wait": wait_done,
        "resume-start": resume_start,
        "resume-finish": resume_finish,
        "image": image,
    }[name](*args)
