"""A small upstream service for the gateway tests: an ASGI app served by uvicorn, in-process or as a
process (`python -m tests.gateway.upstream --port P --name N`)."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
from typing import Any
from urllib.parse import parse_qs

import uvicorn

Scope = dict[str, Any]


def make_app(name: str) -> Any:
    async def app(scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] == "websocket":
            await receive()
            await send({"type": "websocket.accept"})
            while True:
                message = await receive()
                if message["type"] == "websocket.disconnect":
                    return
                await send({"type": "websocket.send", "text": f"{name}:{message.get('text')}"})
        query = {key: values[0] for key, values in parse_qs(scope["query_string"].decode()).items()}
        path = scope["path"]
        headers = {key.decode(): value.decode() for key, value in scope["headers"]}
        status, body, extra = 200, b"", [(b"x-upstream", name.encode())]
        if path == "/echo":
            digest, size = hashlib.sha256(), 0
            while True:
                message = await receive()
                chunk = message.get("body", b"")
                digest.update(chunk)
                size += len(chunk)
                if not message.get("more_body"):
                    break
            body = json.dumps({"bytes": size, "sha256": digest.hexdigest(), "headers": headers}).encode()
        elif path == "/slow":
            await asyncio.sleep(float(query.get("seconds", "1")))
            body = name.encode()
        elif path == "/stream":
            total, chunk = int(query.get("bytes", "0")), int(query.get("chunk", "65536"))
            await send({"type": "http.response.start", "status": 200, "headers": extra})
            block = b"x" * chunk
            while total > 0:
                piece = block[: min(chunk, total)]
                total -= len(piece)
                await send({"type": "http.response.body", "body": piece, "more_body": total > 0})
            if int(query.get("bytes", "0")) == 0:
                await send({"type": "http.response.body", "body": b""})
            return
        elif path == "/status":
            status = int(query.get("code", "200"))
        else:
            body = json.dumps(
                {"upstream": name, "path": path, "query": scope["query_string"].decode(), "headers": headers}
            ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-length", b"%d" % len(body)), *extra],
            }
        )
        await send({"type": "http.response.body", "body": body})

    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", default="upstream")
    args = parser.parse_args()
    uvicorn.run(make_app(args.name), host="127.0.0.1", port=args.port, log_level="warning", lifespan="on")


if __name__ == "__main__":
    main()
