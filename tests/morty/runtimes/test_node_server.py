"""Morty's Node.js runtime as a real `node` process: it listens only once the user's module is loaded, answers
with what the handler returns (JSON, text, bytes, a Response, 204), passes the full request, frames a handler's
output with its invocation id for alpha, turns a thrown error into a 500 without leaking it, and refuses
oversized bodies."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.morty.runtimes._support import MORTY_DIR, accepts, free_port, request, wait_for

NODE_DIR = MORTY_DIR / "runtimes" / "node"
HANDLER = """\
const { Response } = require('morty-runtime');
const started = Date.now();
while (Date.now() - started < 300) {}  // a slow module load: the server must not listen before it ends
exports.handler = async (request) => {
  const kind = request.query.get('kind');
  console.log(`handling ${kind}`);
  console.error('to stderr');
  if (kind === 'text') return 'plain';
  if (kind === 'bytes') return Buffer.from([0, 1, 2]);
  if (kind === 'none') return undefined;
  if (kind === 'throw') throw new TypeError('secret detail');
  if (kind === 'later') {
    return new Promise((resolve) => setTimeout(() => { console.log('later'); resolve({ later: true }); }, 10));
  }
  if (kind === 'response') return new Response(201, { 'X-Made': 'yes' }, { made: true });
  return {
    method: request.method, path: request.path, tags: request.query.getAll('tag'),
    agent: request.headers.get('X-AGENT'), body: request.text(), id: request.invocationId,
  };
};
"""


@pytest.fixture
def node_server(tmp_path: Path) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    if shutil.which("node") is None:
        pytest.fail("node is not installed (scripts/setup installs nodejs)")
    (tmp_path / "main.js").write_text(HANDLER)
    port = free_port()
    env = {
        **os.environ, "MORTY_PORT": str(port), "MORTY_HOST": "127.0.0.1", "MORTY_CODE_DIR": str(tmp_path),
        "MORTY_MAX_BODY": "1000", "NODE_PATH": str(NODE_DIR / "modules"),
    }  # fmt: skip
    process = subprocess.Popen(
        ["node", str(NODE_DIR / "server.js")], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        yield port, process
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_the_node_runtime_serves_the_handler(node_server: tuple[int, subprocess.Popen[bytes]]) -> None:
    port, process = node_server
    assert not accepts(port), "listening before the module finished loading"
    wait_for(lambda: accepts(port), what="the node runtime listening")

    echoed = request(
        port, "POST", "/a%20b?tag=x&tag=y", body=b"hi", headers={"X-Agent": "t", "X-Morty-Invocation-Id": "inv-1"}
    )
    assert echoed.status == 200 and echoed.headers["X-Morty-Invocation-Id"] == "inv-1"
    assert echoed.json() == {
        "method": "POST",
        "path": "/a b",
        "tags": ["x", "y"],
        "agent": "t",
        "body": "hi",
        "id": "inv-1",
    }

    text = request(port, target="/?kind=text")
    assert (text.status, text.headers["Content-Type"], text.body) == (200, "text/plain; charset=utf-8", b"plain")
    assert request(port, target="/?kind=bytes").body == b"\x00\x01\x02"
    assert request(port, target="/?kind=none").status == 204
    made = request(port, target="/?kind=response")
    assert (made.status, made.headers["X-Made"], made.json()) == (201, "yes", {"made": True})
    assert request(port, target="/?kind=later", headers={"X-Morty-Invocation-Id": "inv-late"}).json() == {"later": True}

    failed = request(port, target="/?kind=throw", headers={"X-Morty-Invocation-Id": "inv-2"})
    assert failed.status == 500 and failed.json() == {"error": "TypeError in invocation inv-2", "invocation": "inv-2"}
    assert b"secret detail" not in failed.body
    generated = request(port, target="/?kind=text", headers={"X-Morty-Invocation-Id": "bad id!"})
    assert (
        generated.headers["X-Morty-Invocation-Id"] != "bad id!"
        and len(generated.headers["X-Morty-Invocation-Id"]) == 32
    )

    assert request(port, "POST", "/", body=b"x" * 2000).status == 413

    process.terminate()
    out, err = process.communicate(timeout=10)
    assert "\x1eMORTY inv-1 stdout\x1fhandling undefined\n" in out.decode()
    assert "\x1eMORTY inv-late stdout\x1flater\n" in out.decode(), "attribution follows the handler's timers"
    assert "\x1eMORTY inv-2 stderr\x1fTypeError: secret detail" in err.decode()
    assert "\x1eMORTY inv-1 stderr\x1fto stderr\n" in err.decode()


def test_a_missing_handler_stops_the_runtime_with_a_reason(tmp_path: Path) -> None:
    (tmp_path / "main.js").write_text("exports.other = () => 1;\n")
    env = {
        **os.environ,
        "MORTY_PORT": str(free_port()),
        "MORTY_CODE_DIR": str(tmp_path),
        "NODE_PATH": str(NODE_DIR / "modules"),
    }
    done = subprocess.run(["node", str(NODE_DIR / "server.js")], env=env, capture_output=True, timeout=30, check=False)
    assert done.returncode == 1
    assert "exports no function handler" in done.stderr.decode()
