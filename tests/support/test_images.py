"""Tests of the image-building helpers and of the registry fixture they push to."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.support.images import (
    CGI_ENV_PATH,
    build_busybox_cgi_image,
    build_busybox_httpd_image,
    image_config,
    manifest_digest,
    parse_cgi_env,
    push_image,
)
from tests.support.registry import REPO_ROOT, free_tcp_port


def skopeo_inspect(ref: str, *, config: bool = False) -> dict[str, Any]:
    args = ["skopeo", "inspect", "--tls-verify=false", *(["--config"] if config else []), f"docker://{ref}"]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=60, check=True)
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def http_get(url: str, timeout_s: float = 10.0) -> str:
    """GET ``url``, retrying until it answers or ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                body: bytes = response.read()
                return body.decode()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_build_is_reproducible(tmp_path: Path) -> None:
    first = build_busybox_httpd_image(tmp_path / "a", "t", index_html="same\n", env={"K": "v"})
    second = build_busybox_httpd_image(tmp_path / "b", "t", index_html="same\n", env={"K": "v"})
    other = build_busybox_httpd_image(tmp_path / "b", "u", index_html="different\n", env={"K": "v"})
    assert first == f"oci:{tmp_path / 'a'}:t"
    # Tag t is still in layout b after building u there (umoci gc keeps tagged images).
    assert manifest_digest(first) == manifest_digest(second)
    assert manifest_digest(other) != manifest_digest(first)


@pytest.mark.e2e
def test_push_then_pull_back_from_registry(registry: str, tmp_path: Path) -> None:
    oci_ref = build_busybox_cgi_image(tmp_path / "layout", "v1", port=9090, env={"GREETING": "hello"})
    pushed = push_image(oci_ref, registry, "morty-test/httpd:v1")
    assert pushed == f"{registry}/morty-test/httpd:v1"

    assert skopeo_inspect(pushed)["Digest"] == manifest_digest(oci_ref)
    config = skopeo_inspect(pushed, config=True)
    assert config == image_config(oci_ref)
    entrypoint = ["/bin/busybox", "httpd", "-f", "-v", "-p", "9090", "-h", "/www"]
    assert config["config"]["Entrypoint"] == entrypoint
    assert config["config"]["ExposedPorts"] == {"9090/tcp": {}}
    assert config["config"]["Env"] == ["PATH=/bin", "GREETING=hello"]


@pytest.mark.e2e
def test_cli_builds_and_pushes(registry: str, tmp_path: Path) -> None:
    target = f"{registry}/morty-test/cli:1"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.support.images",
            "build",
            "--layout",
            str(tmp_path / "layout"),
            "--tag",
            "1",
            "--env",
            "GREETING=cli",
            "--cgi",
            "--push",
            target,
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == target
    assert skopeo_inspect(target)["Digest"] == manifest_digest(f"oci:{tmp_path / 'layout'}:1")


@pytest.mark.e2e
@pytest.mark.skipif(os.geteuid() != 0, reason="chroot needs root")
def test_image_serves_index_and_cgi_env(tmp_path: Path) -> None:
    """Unpack the image and run its entrypoint, with its env, chrooted into the rootfs."""
    port = free_tcp_port()
    oci_ref = build_busybox_cgi_image(
        tmp_path / "layout", "t", index_html="<h1>hi</h1>\n", port=port, env={"GREETING": "bonjour"}
    )
    bundle = tmp_path / "bundle"
    subprocess.run(
        ["umoci", "unpack", "--image", oci_ref.removeprefix("oci:"), str(bundle)],
        capture_output=True,
        timeout=60,
        check=True,
    )
    config = image_config(oci_ref)["config"]
    assert isinstance(config, dict)
    env = dict(item.split("=", 1) for item in config["Env"])
    chroot = shutil.which("chroot")
    assert chroot is not None
    with (tmp_path / "httpd.log").open("wb") as log:
        httpd = subprocess.Popen(
            [chroot, str(bundle / "rootfs"), *config["Entrypoint"]],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
    try:
        assert http_get(f"http://127.0.0.1:{port}/") == "<h1>hi</h1>\n"
        answer = parse_cgi_env(http_get(f"http://127.0.0.1:{port}{CGI_ENV_PATH}"))
        assert answer["GREETING"] == "bonjour"
        assert answer["HOSTNAME"] == os.uname().nodename
    finally:
        httpd.terminate()
        httpd.wait(timeout=10)
