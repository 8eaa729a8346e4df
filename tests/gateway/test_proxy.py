"""The data plane in-process: a worker and uvicorn upstreams in the test's event loop, real sockets."""

from __future__ import annotations

import asyncio
import hashlib
import json

import httpx
import pytest
import websockets

from tests.gateway.helpers import data_plane, raw_exchange, read_response, status_of
from tests.support.registry import free_tcp_port

pytestmark = pytest.mark.timeout(30)


async def test_proxies_with_forwarded_headers_and_request_id() -> None:
    async with data_plane() as plane, httpx.AsyncClient(base_url=plane.url) as client:
        response = await client.get("/some/path?x=1", headers={"x-forwarded-for": "10.0.0.9"})
        assert response.status_code == 200
        seen = response.json()
        assert seen["path"] == "/some/path" and seen["query"] == "x=1"
        headers = seen["headers"]
        assert headers["x-forwarded-for"] == "10.0.0.9, 127.0.0.1"
        assert headers["x-forwarded-proto"] == "http"
        assert headers["x-forwarded-host"] == f"127.0.0.1:{plane.port}"
        assert headers["forwarded"] == f'for=127.0.0.1;proto=http;host="127.0.0.1:{plane.port}"'
        generated = headers["x-request-id"]
        assert generated and response.headers["x-request-id"] == generated
        kept = await client.get("/", headers={"x-request-id": "my-id-1"})
        assert kept.json()["headers"]["x-request-id"] == "my-id-1"
        assert kept.headers["x-request-id"] == "my-id-1"


async def test_reuses_upstream_connections() -> None:
    async with data_plane() as plane, httpx.AsyncClient(base_url=plane.url) as client:
        for _ in range(30):
            assert (await client.get("/")).status_code == 200
        (target,) = plane.worker.config.pools["svc"].members
        assert len(target.conns) == 1
        assert len(target.idle) == 1


@pytest.mark.parametrize("size", [0, 1, 65535, 3 * 1024 * 1024 + 7])
async def test_request_bodies_stream_with_content_length_and_chunked(size: int) -> None:
    body = bytes(range(256)) * (size // 256) + b"z" * (size % 256)
    async with data_plane() as plane, httpx.AsyncClient(base_url=plane.url, timeout=20) as client:
        fixed = (await client.post("/echo", content=body)).json()
        assert fixed == {**fixed, "bytes": size, "sha256": hashlib.sha256(body).hexdigest()}

        async def chunks():  # type: ignore[no-untyped-def]
            for start in range(0, len(body), 100_000):
                yield body[start : start + 100_000]

        chunked = (await client.post("/echo", content=chunks())).json()
        assert chunked["bytes"] == size and chunked["sha256"] == hashlib.sha256(body).hexdigest()


async def test_chunked_and_head_responses_keep_the_connection_usable() -> None:
    async with data_plane() as plane:
        reader, writer = await asyncio.open_connection("127.0.0.1", plane.port)
        writer.write(b"GET /stream?bytes=300000&chunk=7000 HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, body = await read_response(reader)
        assert status == 200 and headers["transfer-encoding"] == "chunked" and len(body) == 300000
        writer.write(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, body = await asyncio.wait_for(_read_head_only(reader), 5)
        assert status == 200 and int(headers["content-length"]) > 0
        writer.write(b"GET /status?code=204 HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await read_response(reader))[0] == 204
        status, _, body = await read_response(reader)
        assert status == 200 and json.loads(body)["path"] == "/"
        writer.close()


async def _read_head_only(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    return int(lines[0].split()[1]), headers, b""


async def test_expect_100_continue() -> None:
    async with data_plane() as plane:
        reader, writer = await asyncio.open_connection("127.0.0.1", plane.port)
        writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert interim.startswith(b"HTTP/1.1 100 Continue")
        writer.write(b"hello")
        status, _, body = await read_response(reader)
        assert status == 200 and json.loads(body)["bytes"] == 5
        writer.close()


async def test_expect_100_continue_refused_when_too_large() -> None:
    async with data_plane() as plane:
        plane.route("default", path_prefix="/", max_body_bytes=10)
        response = await raw_exchange(
            plane.port, b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\nExpect: 100-continue\r\n\r\n"
        )
        assert status_of(response) == 413 and b"100 Continue" not in response


async def test_body_size_limit_for_chunked_bodies() -> None:
    async with data_plane() as plane:
        plane.route("default", path_prefix="/", max_body_bytes=100)
        chunk = b"%x\r\n%s\r\n" % (60, b"a" * 60)
        response = await raw_exchange(
            plane.port,
            b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk * 3 + b"0\r\n\r\n",
        )
        assert status_of(response) == 413


SMUGGLING = {
    "content-length and transfer-encoding": (
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    ),
    "differing content-lengths": b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde",
    "repeated content-length": b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\nabcd",
    "invalid transfer-encoding": b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
    "transfer-encoding list": b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    "chunked then identity": b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
    "space before colon": b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length : 4\r\n\r\nabcd",
    "bare LF": b"GET / HTTP/1.1\nHost: x\n\n",
    "obs-fold": b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n",
    "negative length": b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    "bad chunk size": b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
    "garbage": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
    "missing host": b"GET / HTTP/1.1\r\n\r\n",
    "two hosts": b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "absolute-form": b"GET http://evil/ HTTP/1.1\r\nHost: x\r\n\r\n",
}


@pytest.mark.parametrize("name", sorted(SMUGGLING))
async def test_malformed_and_smuggling_requests_are_rejected(name: str) -> None:
    async with data_plane() as plane:
        response = await raw_exchange(plane.port, SMUGGLING[name])
        assert status_of(response) == 400, response[:200]
        assert b"connection: close" in response
        assert plane.worker.config.pools["svc"].members[0].in_flight == 0


async def test_header_limits() -> None:
    async with data_plane() as plane:
        many = b"".join(b"X-H%d: v\r\n" % index for index in range(150))
        assert status_of(await raw_exchange(plane.port, b"GET / HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n")) == 431
        big = b"X-Big: " + b"a" * 40_000 + b"\r\n"
        assert status_of(await raw_exchange(plane.port, b"GET / HTTP/1.1\r\nHost: x\r\n" + big + b"\r\n")) == 431
        long_url = b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
        assert status_of(await raw_exchange(plane.port, long_url)) == 414


async def test_routing_by_host_prefix_method_and_priority() -> None:
    async with data_plane(("a", "b")) as plane, httpx.AsyncClient(base_url=plane.url) as client:
        plane.put("service", "other", {})
        plane.put("target", f"other/127.0.0.1:{plane.upstreams['b']}", {"address": f"127.0.0.1:{plane.upstreams['b']}"})
        plane.put("route", "fn", {"service": "other", "path_prefix": "/fn/hello", "strip_prefix": True})
        plane.put("route", "host", {"service": "other", "hosts": ["*.example.com"], "methods": ["POST"]})
        response = await client.get("/fn/hello/x?q=1")
        assert response.json()["upstream"] == "b" and response.json()["path"] == "/x"
        assert (await client.get("/fn/hello2")).json()["path"] == "/fn/hello2"  # whole segments only
        plane.put("service", "only-a", {})
        plane.put(
            "target", f"only-a/127.0.0.1:{plane.upstreams['a']}", {"address": f"127.0.0.1:{plane.upstreams['a']}"}
        )
        plane.put("route", "fn-v1", {"service": "only-a", "path_prefix": "/fn/hello@v1", "strip_prefix": True})
        pinned = (await client.get("/fn/hello@v1/x")).json()
        assert pinned["upstream"] == "a" and pinned["path"] == "/x"
        assert (await client.get("/fn/hello/x")).json()["upstream"] == "b"
        assert (await client.post("/", headers={"host": "api.example.com"})).json()["upstream"] == "b"
        assert (await client.get("/", headers={"host": "api.example.com"})).headers["x-upstream"] in ("a", "b")
        plane.delete("route", "default")
        assert (await client.get("/nothing")).status_code == 404


async def test_no_target_without_provisioner_is_503() -> None:
    async with data_plane(()) as plane, httpx.AsyncClient(base_url=plane.url) as client:
        response = await client.get("/")
        assert response.status_code == 503 and "retry-after" in response.headers


async def test_read_timeout_is_504() -> None:
    async with data_plane() as plane, httpx.AsyncClient(base_url=plane.url, timeout=10) as client:
        plane.route("default", path_prefix="/", read_timeout_s=0.3)
        response = await client.get("/slow", params={"seconds": "3"})
        assert response.status_code == 504
        assert (await client.get("/")).status_code == 200


async def test_dead_target_is_retried_and_ejected() -> None:
    async with data_plane() as plane, httpx.AsyncClient(base_url=plane.url) as client:
        dead = free_tcp_port()
        plane.put("service", "svc", {"retries": 2, "passive": {"max_failures": 2, "eject_s": 30}})
        plane.put("target", f"svc/127.0.0.1:{dead}", {"address": f"127.0.0.1:{dead}"})
        for _ in range(10):
            response = await client.get("/")
            assert response.status_code == 200 and response.headers["x-upstream"] == "a"
        target = plane.worker.config.pools["svc"].targets[f"127.0.0.1:{dead}"]
        assert not target.usable(asyncio.get_running_loop().time() * 0 + target.ejected_until - 1)
        assert target.failures >= 2


async def test_non_idempotent_request_is_not_retried() -> None:
    async with data_plane(()) as plane, httpx.AsyncClient(base_url=plane.url) as client:
        dead = free_tcp_port()
        plane.put("target", f"svc/127.0.0.1:{dead}", {"address": f"127.0.0.1:{dead}"})
        assert (await client.post("/", content=b"x")).status_code == 502


async def test_websocket_upgrade_is_tunnelled() -> None:
    async with data_plane() as plane, websockets.connect(f"ws://127.0.0.1:{plane.port}/ws") as socket:
        await socket.send("hi")
        assert await asyncio.wait_for(socket.recv(), 5) == "a:hi"
        await socket.send("again")
        assert await asyncio.wait_for(socket.recv(), 5) == "a:again"


async def test_pipelined_requests_are_answered_in_order() -> None:
    async with data_plane() as plane:
        reader, writer = await asyncio.open_connection("127.0.0.1", plane.port)
        writer.write(b"GET /slow?seconds=0.2 HTTP/1.1\r\nHost: x\r\n\r\nGET /second HTTP/1.1\r\nHost: x\r\n\r\n")
        first = await read_response(reader)
        second = await read_response(reader)
        assert first[2] == b"a" and json.loads(second[2])["path"] == "/second"
        writer.close()


async def test_slow_client_and_slow_upstream_do_not_block_others() -> None:
    async with data_plane() as plane, httpx.AsyncClient(base_url=plane.url, timeout=10) as client:
        stalled_reader, stalled = await asyncio.open_connection("127.0.0.1", plane.port)
        stalled.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n" + b"a" * 1000)
        slow = asyncio.create_task(client.get("/slow", params={"seconds": "5"}))
        results = await asyncio.gather(*(client.get("/") for _ in range(50)))
        assert all(r.status_code == 200 for r in results)
        # All 50 were answered while the slow upload and the slow upstream were still pending.
        assert not slow.done()
        assert (await slow).status_code == 200
        stalled.close()


async def test_limits_answer_429() -> None:
    async with data_plane() as plane, httpx.AsyncClient(base_url=plane.url, timeout=10) as client:
        plane.route("default", path_prefix="/", rate_limit={"rate_per_s": 0.001, "burst": 3})
        statuses = [(await client.get("/")).status_code for _ in range(5)]
        assert statuses == [200, 200, 200, 429, 429]
        plane.route("default", path_prefix="/", max_concurrency=1)
        slow = asyncio.create_task(client.get("/slow", params={"seconds": "1"}))
        while plane.worker.config.routes["default"].in_flight == 0:
            await asyncio.sleep(0.01)
        assert (await client.get("/")).status_code == 429
        assert (await slow).status_code == 200
        assert (await client.get("/")).status_code == 200


async def test_draining_target_finishes_in_flight_requests() -> None:
    async with data_plane(("a", "b")) as plane, httpx.AsyncClient(base_url=plane.url, timeout=10) as client:
        slow = [asyncio.create_task(client.get("/slow", params={"seconds": "0.5"})) for _ in range(6)]
        pool = plane.worker.config.pools["svc"]
        while sum(t.in_flight for t in pool.members) < 6:
            await asyncio.sleep(0.01)
        plane.delete("target", f"svc/127.0.0.1:{plane.upstreams['b']}")
        after = [await client.get("/") for _ in range(5)]
        assert {r.headers["x-upstream"] for r in after} == {"a"}
        done = await asyncio.gather(*slow)
        assert [r.status_code for r in done] == [200] * 6
        assert {r.text for r in done} == {"a", "b"}


async def test_a_slow_upload_is_not_a_read_timeout() -> None:
    async with data_plane() as plane, httpx.AsyncClient(base_url=plane.url, timeout=10) as client:
        plane.route("default", path_prefix="/", read_timeout_s=0.5)

        async def trickle():  # type: ignore[no-untyped-def]
            for _ in range(8):
                await asyncio.sleep(0.2)
                yield b"x" * 1000

        response = await client.post("/echo", content=trickle())
        assert response.status_code == 200 and response.json()["bytes"] == 8000


async def test_a_slow_reader_leaves_the_pooled_upstream_usable() -> None:
    async with data_plane() as plane, httpx.AsyncClient(base_url=plane.url, timeout=5) as client:
        (target,) = plane.worker.config.pools["svc"].members
        for _ in range(3):
            reader, writer = await asyncio.open_connection("127.0.0.1", plane.port, limit=1 << 16)
            writer.write(b"GET /stream?bytes=8000000&chunk=1000000 HTTP/1.1\r\nHost: x\r\n\r\n")
            # Read nothing until the gateway has had to stop reading the upstream.
            while not any(conn.reading_paused for conn in target.conns):
                await asyncio.sleep(0.01)
            status, _, body = await read_response(reader, timeout=20)
            assert status == 200 and len(body) == 8_000_000
            writer.close()
            assert not any(conn.reading_paused for conn in target.idle)
            assert (await client.get("/")).status_code == 200
        # Deterministically: a response that ends while its client has paused the upstream's reading.
        slow = asyncio.create_task(client.get("/slow", params={"seconds": "0.3"}))
        while target.in_flight == 0:
            await asyncio.sleep(0.01)
        (busy,) = [conn for conn in target.conns if conn.exchange is not None]
        busy.reading_paused = True  # as ClientConnection.pause_writing leaves it
        assert (await slow).status_code == 200
        assert busy in target.idle and not busy.reading_paused
