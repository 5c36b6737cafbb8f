"""Drives nrvna-api's MCP server with the official `mcp` package, over stdio
(`nrvna-api WS --mcp`, spawned by the client) or streamable HTTP (`/mcp` on
the gateway). Usage: mcp_client.py stdio NRVNA_API_BIN WS | http URL KEY.
Exits non-zero with a message on the first failed check."""

import json
import os
import sys

import anyio
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client


def check(cond, what):
    if not cond:
        raise AssertionError(what)


async def call(session, name, **args):
    r = await session.call_tool(name, args)
    text = "".join(getattr(c, "text", "") for c in r.content)
    return r.is_error, text


async def scenario(session, ws, label):
    await session.initialize()
    tools = {t.name for t in (await session.list_tools()).tools}
    check({"submit", "status", "wait", "result", "list", "cancel"} <= tools, f"tools {tools}")

    err, out = await call(session, "submit", prompt="Say hello.", max_tokens=8, temperature=0, tags=[f"mcp_{label}"])
    check(not err, out)
    jid = json.loads(out)["id"]
    err, out = await call(session, "wait", id=jid, timeout_s=120)
    check(not err and json.loads(out)["status"] == "done", f"wait: {out}")
    err, text = await call(session, "result", id=jid)
    with open(os.path.join(ws, "output", jid, "result.txt"), encoding="utf-8") as f:
        check(not err and text == f.read(), f"result {text!r}")

    err, out = await call(session, "submit", prompt="a cat", kind="embed", tags=[f"mcp_{label}"])
    eid = json.loads(out)["id"]
    await call(session, "wait", id=eid, timeout_s=120)
    err, out = await call(session, "result", id=eid)
    check(not err and len(json.loads(out)["vector"]) > 0, f"embedding {out[:200]}")

    schema = {"type": "object", "properties": {"colour": {"type": "string", "maxLength": 12}}, "required": ["colour"]}
    err, out = await call(session, "submit", prompt="Name a colour in JSON.", json_schema=schema, max_tokens=32,
                          temperature=0)
    sid = json.loads(out)["id"]
    await call(session, "wait", id=sid, timeout_s=120)
    err, out = await call(session, "result", id=sid)
    check(not err and isinstance(json.loads(out)["colour"], str), f"schema result {out}")

    err, out = await call(session, "list", tag=f"mcp_{label}")
    rows = json.loads(out)
    check(sorted(r["id"] for r in rows) == sorted([jid, eid]), f"list {rows}")

    err, out = await call(session, "submit", prompt="Write a very long story about a knight.", max_tokens=2000,
                          temperature=0.8, seed=1, priority="low")
    lid = json.loads(out)["id"]
    err, out = await call(session, "cancel", id=lid)
    check(not err and json.loads(out)["cancel"] in ("cancelled", "stopping"), f"cancel {out}")
    err, out = await call(session, "wait", id=lid, timeout_s=60)
    st = json.loads(out)
    check(st["status"] == "failed" and st.get("cancelled") is True, f"after cancel: {st}")

    err, out = await call(session, "result", id="not-an-id")
    check(err and "not a job id" in out, f"bad id: {out}")
    print(f"mcp {label} ok")


async def main():
    mode = sys.argv[1]
    if mode == "stdio":
        binary, ws = sys.argv[2], sys.argv[3]
        params = StdioServerParameters(command=binary, args=[ws, "--mcp"], env={"NRVNA_LOG_LEVEL": "warn"})
        async with stdio_client(params) as (read, write):
            async with ClientSession(read, write) as session:
                await scenario(session, ws, "stdio")
    else:
        url, key, ws = sys.argv[2], sys.argv[3], sys.argv[4]
        http = create_mcp_http_client(headers={"Authorization": f"Bearer {key}"})
        async with http:
            async with streamable_http_client(url, http_client=http) as streams:
                read, write = streams[0], streams[1]
                async with ClientSession(read, write) as session:
                    await scenario(session, ws, "http")


anyio.run(main)
