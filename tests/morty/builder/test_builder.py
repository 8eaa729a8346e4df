"""The builder for real: mmdebstrap (cached under /var/cache/morty/base, ~60 s the first time), umoci, runc (the
sandboxed pip install, which reaches PyPI) and the registry fixture."""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import subprocess
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from morty.api import store
from morty.api.database import Database
from morty.api.models import BuildStatus, FunctionCreate, VersionCreate, VersionStatus
from morty.builder._tools import BuildError
from morty.builder.base import TAG, BaseImage, ensure_base_image
from morty.builder.function import FunctionBuild, image_tag
from morty.builder.queue import Builder, BuilderSettings
from morty.storage.base import CodeStore, ObjectInfo, UploadTarget
from tests.support.registry import free_tcp_port

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(900)]

HANDLER = b"""\
import six


def handler(request):
    return {"six": six.__version__}
"""


def code_zip(files: dict[str, str | bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def base() -> BaseImage:
    return asyncio.run(ensure_base_image("python3.11"))


def _config(layout: Path, tag: str) -> dict[str, object]:
    index = json.loads((layout / "index.json").read_text())
    [manifest] = [m for m in index["manifests"] if m["annotations"]["org.opencontainers.image.ref.name"] == tag]

    def blob(digest: str) -> dict[str, object]:
        algorithm, _, value = digest.partition(":")
        document: dict[str, object] = json.loads((layout / "blobs" / algorithm / value).read_text())
        return document

    manifest_doc = blob(manifest["digest"])
    config_ref = manifest_doc["config"]
    assert isinstance(config_ref, dict)
    return blob(config_ref["digest"])


def _pull_and_unpack(reference: str, directory: Path) -> Path:
    directory.mkdir(parents=True)
    layout = directory / "pulled"
    subprocess.run(
        ["skopeo", "copy", "--quiet", "--src-tls-verify=false", f"docker://{reference}", f"oci:{layout}:pulled"],
        check=True,
    )
    subprocess.run(["umoci", "unpack", "--image", f"{layout}:pulled", str(directory / "bundle")], check=True)
    return directory / "bundle" / "rootfs"


def _chroot_python(rootfs: Path, script: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": "/opt/morty/deps", "MORTY_CODE_DIR": "/var/task"}
    return subprocess.run(
        [shutil.which("chroot") or "/usr/sbin/chroot", str(rootfs), "/usr/bin/python3", "-c", script],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


def test_base_image_layout(base: BaseImage) -> None:
    config = _config(base.layout, TAG)
    inner = config["config"]
    assert isinstance(inner, dict)
    assert inner["Entrypoint"] == ["/usr/bin/python3", "/opt/morty/alpha/__main__.py"]
    assert "8080/tcp" in inner["ExposedPorts"]
    assert "MORTY_RUNTIME_CMD=/usr/bin/python3 /opt/morty/runtimes/python/server.py" in inner["Env"]
    # Cached: asking again builds nothing and answers the same layout.
    again = asyncio.run(ensure_base_image("python3.11", base.layout.parent.parent))
    assert again == base


async def test_function_image_with_dependency(base: BaseImage, registry: str, tmp_path: Path) -> None:
    archive = tmp_path / "code.zip"
    archive.write_bytes(code_zip({"main.py": HANDLER, "requirements.txt": "six==1.16.0\n"}))
    lines: list[str] = []

    async def log(text: str) -> None:
        lines.append(text)

    workdir = tmp_path / "work"
    workdir.mkdir()
    image = await FunctionBuild(base=base, registry=registry, workdir=workdir, log=log).build("hello", "1.0.0", archive)
    output = "".join(lines)
    assert "Successfully installed six-1.16.0" in output, output
    assert image.reference == f"{registry}/morty/fn-hello:1.0.0"
    assert image.digest.startswith("sha256:")
    assert image.handler == "main.handler"

    config = _config(workdir / "layout", "function")
    inner = config["config"]
    assert isinstance(inner, dict)
    env = inner["Env"]
    assert isinstance(env, list)
    assert {"MORTY_CODE_DIR=/var/task", "PYTHONPATH=/opt/morty/deps", "MORTY_HANDLER=main.handler"} <= set(env)
    assert inner["Entrypoint"] == ["/usr/bin/python3", "/opt/morty/alpha/__main__.py"]

    rootfs = _pull_and_unpack(image.reference, tmp_path / "check")
    assert (rootfs / "var/task/main.py").read_bytes() == HANDLER
    assert (rootfs / "opt/morty/alpha/__main__.py").is_file()
    assert (rootfs / "opt/morty/runtimes/python/server.py").is_file()
    script = "import sys; sys.path.insert(0, '/var/task'); import main, six; print(main.handler(None))"
    proc = _chroot_python(rootfs, script)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "{'six': '1.16.0'}"

    # The image's own entrypoint and environment (alpha → runtime → handler) serve a request.
    assert isinstance(inner["Entrypoint"], list)
    await _serve_once(rootfs, inner["Entrypoint"], env)


async def _serve_once(rootfs: Path, entrypoint: list[str], image_env: list[str]) -> None:
    env = dict(item.split("=", 1) for item in image_env)
    port, control = free_tcp_port(), free_tcp_port()
    env.update(MORTY_PORT=str(port), MORTY_ALPHA_PORT=str(control), MORTY_ALPHA_HOST="127.0.0.1")
    chroot = shutil.which("chroot") or "/usr/sbin/chroot"
    proc = await asyncio.create_subprocess_exec(
        chroot, str(rootfs), *entrypoint, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        ready = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert ready.startswith(b"MORTY-READY"), ready
        async with httpx.AsyncClient() as client:
            response = await client.get(f"http://127.0.0.1:{port}/")
        assert response.status_code == 200, response.text
        assert response.json() == {"six": "1.16.0"}
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.communicate(), 30)


async def test_failing_requirements_fail_with_pips_error(base: BaseImage, registry: str, tmp_path: Path) -> None:
    archive = tmp_path / "code.zip"
    requirements = "morty-surely-no-such-package-0a1b2c==1.0\n"
    archive.write_bytes(
        code_zip({"main.py": "def handler(request):\n    return 'ok'\n", "requirements.txt": requirements})
    )
    lines: list[str] = []

    async def log(text: str) -> None:
        lines.append(text)

    workdir = tmp_path / "work"
    workdir.mkdir()
    with pytest.raises(BuildError) as failed:
        await FunctionBuild(base=base, registry=registry, workdir=workdir, log=log).build("bad", "1.0.0", archive)
    assert "pip install failed" in failed.value.message
    assert "No matching distribution found for morty-surely-no-such-package-0a1b2c" in "".join(lines)


def test_image_tag() -> None:
    assert image_tag("1.2.3-rc.1+build.5") == "1.2.3-rc.1_build.5"


class FileCodeStore(CodeStore):
    """Code "uploaded" as local files, for the builder (only `download` matters here)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def upload_target(self, key: str, *, expires_in: float, max_bytes: int) -> UploadTarget:
        raise NotImplementedError

    async def stat(self, key: str) -> ObjectInfo | None:
        raise NotImplementedError

    async def download(self, key: str, destination: Path) -> None:
        shutil.copyfile(self.root / key, destination)

    async def delete(self, key: str) -> None:
        (self.root / key).unlink(missing_ok=True)


@pytest.fixture
async def database(tmp_path: Path) -> AsyncIterator[Database]:
    db = Database(f"sqlite:///{tmp_path / 'morty.db'}")
    await db.migrate()
    try:
        yield db
    finally:
        await db.close()


async def _upload(db: Database, codes: FileCodeStore, name: str, version: str, archive: bytes) -> str:
    async with db.transaction() as session:
        _, key = await store.create_version(session, name, VersionCreate(version=version))
    (codes.root / key).parent.mkdir(parents=True, exist_ok=True)
    (codes.root / key).write_bytes(archive)
    async with db.transaction() as session:
        _, build = await store.record_upload(session, key, size=len(archive), sha256=None)
    return build.id


async def test_builder_queue(base: BaseImage, registry: str, database: Database, tmp_path: Path) -> None:
    codes = FileCodeStore(tmp_path / "code")
    settings = BuilderSettings(registry=registry, cache_dir=base.layout.parent.parent, work_dir=tmp_path / "builds")
    builder = Builder(database, codes, settings)
    async with database.transaction() as session:
        await store.create_function(session, FunctionCreate(name="echo", runtime="python3.11"))

    good = await _upload(database, codes, "echo", "1.0.0", code_zip({"main.py": HANDLER, "requirements.txt": "six\n"}))
    await builder.enqueue(good)
    await builder.wait(good)
    async with database.read() as session:
        build = await store.get_build(session, "echo", good)
        version = await store.get_version(session, "echo", "1.0.0")
    assert build.status == BuildStatus.SUCCEEDED, build.log
    assert "Successfully installed six" in build.log
    assert version.status == VersionStatus.READY
    assert version.image == f"{registry}/morty/fn-echo:1.0.0"
    assert version.digest is not None and version.digest.startswith("sha256:")

    # A failing build fails only its own version; 1.0.0 stays ready with its image.
    bad = await _upload(
        database, codes, "echo", "1.1.0", code_zip({"main.py": HANDLER, "requirements.txt": "no-such-pkg-x9z8\n"})
    )
    # And a cancelled one ends failed too.
    slow = await _upload(database, codes, "echo", "1.2.0", code_zip({"main.py": HANDLER, "requirements.txt": "six\n"}))
    await builder.enqueue(bad)
    await builder.enqueue(slow)
    await asyncio.sleep(0.2)
    assert await builder.cancel(slow)
    await builder.wait(bad)
    async with database.read() as session:
        failed = await store.get_build(session, "echo", bad)
        cancelled = await store.get_build(session, "echo", slow)
        first = await store.get_version(session, "echo", "1.0.0")
        second = await store.get_version(session, "echo", "1.1.0")
    assert failed.status == BuildStatus.FAILED
    assert "No matching distribution found for no-such-pkg-x9z8" in failed.log
    assert "pip install failed" in failed.message
    assert second.status == VersionStatus.FAILED
    assert cancelled.status == BuildStatus.FAILED and cancelled.message == "cancelled"
    assert first.status == VersionStatus.READY and first.digest == version.digest
    assert builder.active() == []

    # Shutting down mid-build leaves the build `running`, for the API's next start to queue it again.
    later = await _upload(database, codes, "echo", "1.3.0", code_zip({"main.py": HANDLER, "requirements.txt": "six\n"}))
    await builder.enqueue(later)
    await asyncio.sleep(0.5)
    await builder.close()
    async with database.read() as session:
        interrupted = await store.get_build(session, "echo", later)
    assert interrupted.status == BuildStatus.RUNNING
    assert "shutting down" in interrupted.log
    async with database.transaction() as session:
        assert await store.requeue_interrupted_builds(session) == [later]


async def test_cancel_queued_build(base: BaseImage, registry: str, database: Database, tmp_path: Path) -> None:
    codes = FileCodeStore(tmp_path / "code")
    settings = BuilderSettings(
        registry=registry, cache_dir=base.layout.parent.parent, work_dir=tmp_path / "builds", concurrency=1
    )
    builder = Builder(database, codes, settings)
    async with database.transaction() as session:
        await store.create_function(session, FunctionCreate(name="queued", runtime="python3.11"))
    first = await _upload(database, codes, "queued", "1.0.0", code_zip({"main.py": HANDLER}))
    second = await _upload(database, codes, "queued", "2.0.0", code_zip({"main.py": HANDLER}))
    await builder.enqueue(first)
    await builder.enqueue(second)
    await asyncio.sleep(0)
    assert await builder.cancel(second)
    await builder.wait(first)
    async with database.read() as session:
        done = await store.get_build(session, "queued", first)
        cancelled = await store.get_build(session, "queued", second)
    assert done.status == BuildStatus.SUCCEEDED, done.log
    assert "no requirements.txt" in done.log
    assert cancelled.status == BuildStatus.FAILED and cancelled.message == "cancelled"
    await builder.close()
