"""The Python runtime as a real process: request pass-through, results, errors, invocation ids, output framing."""

from __future__ import annotations

import http.client
import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.morty.runtimes._support import SERVER, accepts, env, free_port, request, stop, try_request, wait_for

HANDLER = """
import sys
import threading

from morty_runtime import Request, Response


def handler(request: Request):
    if request.path == "/dict":
        return {"q": request.query.getall("q")}
    if request.path == "/none":
        return None
    if request.path == "/boom":
        print("about to fail")
        raise ValueError("secret-detail")
    if request.path == "/thread":
        thread = threading.Thread(target=lambda: print("from a thread"))
        thread.start()
        thread.join()
        sys.stderr.write("partial line without newline")
        return "ok"
    return Response(
        201,
        [("X-Multi", "1"), ("X-Multi", "2")],
        {
            "method": request.method,
            "path": request.path,
            "raw_path": request.raw_path,
            "query": request.query.multi_items(),
            "headers": request.headers.multi_items(),
            "body": request.text(),
            "invocation": request.invocation_id,
        },
    )
"""


class Runtime:
    def __init__(self, process: subprocess.Popen[bytes], port: int, stderr: Path) -> None:
        self.process = process
        self.port = port
        self.stderr = stderr

    def stderr_text(self) -> str:
        return self.stderr.read_text(errors="replace")


def start_runtime(tmp_path: Path, handler: str = HANDLER, **extra: str) -> Runtime:
    code = tmp_path / "code"
    code.mkdir(exist_ok=True)
    (code / "main.py").write_text(handler)
    port = free_port()
    stderr = tmp_path / "stderr"
    process = subprocess.Popen(
        [sys.executable, str(SERVER)],
        env=env(MORTY_PORT=port, MORTY_CODE_DIR=code, MORTY_HOST="127.0.0.1", **extra),
        stdout=stderr.open("wb"),
        stderr=subprocess.STDOUT,
    )
    wait_for(lambda: accepts(port) or process.poll() is not None, what="the runtime to listen")
    assert process.poll() is None, stderr.read_text()
    return Runtime(process, port, stderr)


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[Runtime]:
    started = start_runtime(tmp_path)
    yield started
    stop(started.process)


def test_get_passes_method_path_query_and_headers_through(runtime: Runtime) -> None:
    reply = request(runtime.port, "GET", "/a%20b/c?x=1&tag=a&tag=b&empty=", headers={"X-Custom": "Value"})
    assert reply.status == 201
    assert reply.headers.get_all("X-Multi") == ["1", "2"]
    data = reply.json()
    assert data["method"] == "GET"
    assert (data["path"], data["raw_path"]) == ("/a b/c", "/a%20b/c")
    assert data["query"] == [["x", "1"], ["tag", "a"], ["tag", "b"], ["empty", ""]]
    assert ["X-Custom", "Value"] in data["headers"]


def test_post_body_round_trips_including_chunked(runtime: Runtime) -> None:
    payload = "héllo wörld " * 1000
    reply = request(runtime.port, "POST", "/echo", payload.encode(), {"Content-Type": "text/plain; charset=utf-8"})
    assert reply.json()["body"] == payload

    conn = http.client.HTTPConnection("127.0.0.1", runtime.port, timeout=10)
    conn.request("PUT", "/echo", body=iter([b"chunk-1 ", b"chunk-2"]), encode_chunked=True)
    response = conn.getresponse()
    assert json.loads(response.read())["body"] == "chunk-1 chunk-2"
    conn.close()


def test_dict_result_is_json_and_none_is_204(runtime: Runtime) -> None:
    reply = request(runtime.port, "GET", "/dict?q=1&q=2")
    assert reply.status == 200
    assert reply.headers["Content-Type"] == "application/json"
    assert reply.json() == {"q": ["1", "2"]}
    assert request(runtime.port, "GET", "/none").status == 204


def test_invocation_id_is_echoed_or_generated(runtime: Runtime) -> None:
    reply = request(runtime.port, "GET", "/", headers={"X-Morty-Invocation-Id": "inv-42"})
    assert reply.headers["X-Morty-Invocation-Id"] == "inv-42"
    assert reply.json()["invocation"] == "inv-42"
    generated = request(runtime.port, "GET", "/")
    assert len(generated.headers["X-Morty-Invocation-Id"]) >= 16
    assert generated.json()["invocation"] == generated.headers["X-Morty-Invocation-Id"]
    bad = request(runtime.port, "GET", "/", headers={"X-Morty-Invocation-Id": "has space\x1f"})
    assert bad.headers["X-Morty-Invocation-Id"] != "has space\x1f"


def test_keep_alive_serves_several_requests_on_one_connection(runtime: Runtime) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", runtime.port, timeout=10)
    ids = {request(runtime.port, "GET", f"/dict?q={i}", connection=conn).json()["q"][0] for i in range(5)}
    assert ids == {"0", "1", "2", "3", "4"}
    conn.close()


def test_handler_exception_is_a_500_without_traceback_and_is_logged_framed(runtime: Runtime) -> None:
    reply = request(runtime.port, "GET", "/boom", headers={"X-Morty-Invocation-Id": "boom-1"})
    assert reply.status == 500
    assert reply.headers["Content-Type"] == "application/json"
    assert reply.json() == {
        "error": "the function's handler raised an exception",
        "type": "ValueError",
        "invocation": "boom-1",
    }
    assert b"secret-detail" not in reply.body and b"Traceback" not in reply.body
    wait_for(lambda: "secret-detail" in runtime.stderr_text(), what="the traceback on stderr")
    lines = runtime.stderr_text().split("\n")
    assert "\x1eMORTY boom-1 stdout\x1fabout to fail" in lines
    assert "\x1eMORTY boom-1 stderr\x1fTraceback (most recent call last):" in lines
    assert "\x1eMORTY boom-1 stderr\x1fValueError: secret-detail" in lines
    assert request(runtime.port, "GET", "/dict").status == 200  # the server survives


def test_output_of_threads_started_by_the_handler_is_attributed(runtime: Runtime) -> None:
    request(runtime.port, "GET", "/thread", headers={"X-Morty-Invocation-Id": "thr-1"})
    lines = wait_for(
        lambda: [line for line in runtime.stderr_text().split("\n") if "thr-1" in line] or None, what="output"
    )
    assert "\x1eMORTY thr-1 stdout\x1ffrom a thread" in lines
    assert "\x1eMORTY thr-1 stderr\x1fpartial line without newline" in lines  # flushed at the invocation's end


def test_sigterm_stops_the_runtime_cleanly(runtime: Runtime) -> None:
    runtime.process.send_signal(signal.SIGTERM)
    assert runtime.process.wait(10) == 0


def test_startup_never_resolves_names(tmp_path: Path) -> None:
    # Every reverse/forward lookup entry point fails loudly in the child; the runtime must start and serve anyway.
    site = tmp_path / "site"
    site.mkdir()
    marker = tmp_path / "lookups"
    (site / "sitecustomize.py").write_text(
        "import socket\n"
        "def _forbidden(*args, **kwargs):\n"
        f"    open({str(marker)!r}, 'a').write(repr(args) + '\\n')\n"
        "    raise OSError('name resolution is forbidden in this test')\n"
        "socket.getfqdn = socket.gethostbyaddr = socket.getnameinfo = socket.gethostbyname = _forbidden\n"
    )
    started = start_runtime(tmp_path, PYTHONPATH=site)
    try:
        assert request(started.port, "GET", "/dict").status == 200
        assert not marker.exists(), marker.read_text()
    finally:
        stop(started.process)


def test_unloadable_handler_exits_non_zero_with_the_reason(tmp_path: Path) -> None:
    port = free_port()
    result = subprocess.run(
        [sys.executable, str(SERVER)],
        env=env(MORTY_PORT=port, MORTY_CODE_DIR=tmp_path, MORTY_HANDLER="missing.handler"),
        capture_output=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert b"No module named 'missing'" in result.stderr
    assert try_request(port) is None
