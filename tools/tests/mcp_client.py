"""The MCP server driven by the official Python SDK (`mcp` from PyPI), over stdio and over
streamable HTTP: initialise, list tools, remember, recall finds it, forget, restart the server
and recall again (durable), a malformed call. Run by tools/tests/mcp_python.rs with the
virtual environment tools/setup.sh makes:

    tools/.venv/bin/python tools/tests/mcp_client.py PATH/TO/magray-mem STORE_DIR
"""

import asyncio
import socket
import subprocess
import sys
from contextlib import asynccontextmanager

from mcp import ClientSession, MCPError, StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client

BIN, STORE = sys.argv[1], sys.argv[2]
TOOLS = {"remember", "recall", "forget", "rate", "get", "supersede", "memory_status"}


def structured(result):
    assert not result.is_error, result
    return result.structured_content


@asynccontextmanager
async def over_stdio(store):
    params = StdioServerParameters(command=BIN, args=["--store", store, "mcp"])
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            yield session


@asynccontextmanager
async def over_http(store):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [BIN, "--store", store, "serve", "--bind", f"127.0.0.1:{port}"],
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = server.stderr.readline()
        assert line.startswith("listening on"), line
        async with streamable_http_client(f"http://127.0.0.1:{port}/mcp") as streams:
            read, write = streams[0], streams[1]
            async with ClientSession(read, write) as session:
                await session.initialize()
                yield session
    finally:
        server.terminate()
        assert server.wait(timeout=30) == 0, "serve did not close cleanly on SIGTERM"


async def first_session(session):
    names = {t.name for t in (await session.list_tools()).tools}
    assert TOOLS <= names, names
    r = structured(
        await session.call_tool(
            "remember",
            {"text": "the release train leaves every second Tuesday", "layer": "insights"},
        )
    )
    kept = r["id"]
    doomed = structured(await session.call_tool("remember", {"text": "scratch note to forget"}))["id"]
    hits = structured(await session.call_tool("recall", {"query": "when does the release train leave?", "k": 3}))
    assert hits["hits"][0]["id"] == kept, hits
    structured(await session.call_tool("forget", {"id": doomed}))
    assert "500" in await refused(session, "recall", {"query": "x", "k": 500})
    why = await refused(session, "remember", {"text": 42})
    assert "string" in why or "text" in why, why
    return kept, doomed


async def refused(session, tool, args):
    """The message of a call that must be refused: a protocol error, or (for arguments that do
    not match the tool's schema) a tool error result the model can read and correct."""
    try:
        result = await session.call_tool(tool, args)
    except MCPError as e:
        return str(e)
    assert result.is_error, f"{tool} {args} was accepted: {result}"
    return " ".join(getattr(c, "text", "") for c in result.content)


async def second_session(session, kept, doomed):
    hits = structured(await session.call_tool("recall", {"query": "release train Tuesday", "k": 5}))
    ids = [h["id"] for h in hits["hits"]]
    assert ids[0] == kept, hits
    assert doomed not in ids, hits


async def main():
    for name, transport in (("stdio", over_stdio), ("http", over_http)):
        store = f"{STORE}/{name}"
        async with transport(store) as session:
            kept, doomed = await first_session(session)
        async with transport(store) as session:
            await second_session(session, kept, doomed)
        print(f"python client over {name}: ok")
    print("2 passed, 0 failed")


asyncio.run(main())
