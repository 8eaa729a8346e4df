"""A Debian bookworm image with python3 serving HTTP on :8080, built once with mmdebstrap and cached.

The OCI layout lands in `/var/cache/rik-bench/python-http-<hash>/layout` (tag `bench`), keyed by a hash
of the whole recipe (mmdebstrap arguments, server script, extra files), so reruns skip the ~60 s build.

    uv run python -m bench._python_image     # builds (if needed) and prints the oci: reference
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

CACHE = Path("/var/cache/rik-bench")
TAG = "bench"
PORT = 8080
BODY = "rik-bench-ok\n"
MIRROR = "http://deb.debian.org/debian"
MMDEBSTRAP = [
    "mmdebstrap", "--quiet", "--variant=minbase", "--include=python3", "--mode=root",
    "--dpkgopt=path-exclude=/usr/share/doc/*", "--dpkgopt=path-exclude=/usr/share/man/*",
    "--dpkgopt=path-exclude=/usr/share/locale/*", "--dpkgopt=path-exclude=/usr/share/info/*",
    "bookworm",
]  # fmt: skip
# ThreadingHTTPServer.server_bind calls socket.getfqdn() (a reverse lookup): skip it, so the server
# listens as soon as Python has imported http.server, with or without a resolver.
SERVER = f"""\
import http.server
import socketserver

BODY = {BODY.encode()!r}


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, *args):
        pass


class Server(http.server.ThreadingHTTPServer):
    def server_bind(self):
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = "localhost", self.server_address[1]


Server(("0.0.0.0", {PORT}), Handler).serve_forever()
"""
FILES = {
    "srv/server.py": SERVER,
    "etc/hosts": "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
    "etc/resolv.conf": "# no resolver: lookups fail fast\n",
    "etc/hostname": "bench\n",
}
ENTRYPOINT = ["/usr/bin/python3", "/srv/server.py"]
ENV = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]


def recipe_hash() -> str:
    recipe = {"mmdebstrap": MMDEBSTRAP, "mirror": MIRROR, "files": FILES, "entrypoint": ENTRYPOINT, "env": ENV}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def python_http_image() -> str:
    """`oci:<layout>:bench`, building the layout first unless the cache has it."""
    directory = CACHE / f"python-http-{recipe_hash()}"
    layout = directory / "layout"
    reference = f"oci:{layout}:{TAG}"
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (directory / "done").is_file():
            return reference
        shutil.rmtree(layout, ignore_errors=True)
        with tempfile.TemporaryDirectory(prefix="build-", dir=directory) as tmp:
            rootfs = Path(tmp) / "rootfs"
            subprocess.run([*MMDEBSTRAP, str(rootfs), MIRROR], check=True, stdin=subprocess.DEVNULL)
            for name, text in FILES.items():
                path = rootfs / name
                path.parent.mkdir(parents=True, exist_ok=True)
                path.unlink(missing_ok=True)
                path.write_text(text)
            layer = Path(tmp) / "layer.tar"
            subprocess.run(
                ["tar", "--numeric-owner", "--xattrs", "-C", str(rootfs), "-cf", str(layer), "."], check=True
            )
            image = f"{layout}:{TAG}"
            subprocess.run(["umoci", "init", "--layout", str(layout)], check=True)
            subprocess.run(["umoci", "new", "--image", image], check=True)
            subprocess.run(["umoci", "raw", "add-layer", "--image", image, str(layer)], check=True)
            config = ["umoci", "config", "--image", image, "--config.workingdir", "/"]
            config += ["--config.exposedports", f"{PORT}/tcp"]
            for word in ENTRYPOINT:
                config += ["--config.entrypoint", word]
            for env in ENV:
                config += ["--config.env", env]
            subprocess.run(config, check=True)
            subprocess.run(["umoci", "gc", "--layout", str(layout)], check=True)
        (directory / "done").write_text(reference + "\n")
    return reference


if __name__ == "__main__":
    print(python_http_image())
