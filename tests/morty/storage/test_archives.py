"""Archive validation and extraction, against archives crafted to attack the extractor."""

from __future__ import annotations

import gzip
import io
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from morty.storage.archives import ArchiveError, ArchiveLimits, extract_archive, inspect_archive

SMALL = ArchiveLimits(max_archive_bytes=1024 * 1024, max_files=50, max_expanded_bytes=1024 * 1024)


def make_zip(path: Path, entries: list[tuple[str, bytes, int | None]]) -> Path:
    """entries: (name, data, unix mode or None)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data, mode in entries:
            info = zipfile.ZipInfo(name)
            info.compress_type = zipfile.ZIP_DEFLATED
            if mode is not None:
                info.create_system = 3
                info.external_attr = mode << 16
            archive.writestr(info, data)
    return path


def tar_member(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", link: str = "", mode: int = 0o644) -> tuple:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size, info.mode = kind, link, len(data), mode
    return info, data


def make_tar(path: Path, members: list[tuple], gz: bool = True) -> Path:
    with tarfile.open(path, "w:gz" if gz else "w") as archive:
        for info, data in members:
            archive.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return path


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """`tmp_path/box/out` is the extraction target; nothing may appear in `box` besides it."""
    (tmp_path / "box" / "out").mkdir(parents=True)
    return tmp_path


def assert_rejected(archive: Path, workdir: Path, match: str, limits: ArchiveLimits = SMALL) -> None:
    with pytest.raises(ArchiveError, match=match):
        inspect_archive(archive, limits)
    with pytest.raises(ArchiveError, match=match):
        extract_archive(archive, workdir / "box" / "out", limits)
    assert [p.name for p in (workdir / "box").iterdir()] == ["out"], "nothing written beside the target"
    assert list((workdir / "box" / "out").iterdir()) == [], "the target is left empty"


def test_a_good_zip_extracts_with_safe_modes(workdir: Path) -> None:
    archive = make_zip(
        workdir / "good.zip",
        [
            ("app/", b"", 0o40755),
            ("app/handler.py", b"def handler(r): ...\n", 0o104755),  # setuid bit dropped
            ("app/requirements.txt", b"requests\n", None),
            ("app/lib/link.py", b"../handler.py", 0o120777),
        ],
    )
    out = workdir / "box" / "out"
    summary = extract_archive(archive, out, SMALL)
    assert summary.format == "zip" and summary.files == 2
    assert (out / "app/handler.py").read_text() == "def handler(r): ...\n"
    assert stat.S_IMODE((out / "app/handler.py").stat().st_mode) == 0o755
    assert stat.S_IMODE((out / "app/requirements.txt").stat().st_mode) == 0o644
    assert (out / "app/lib/link.py").is_symlink() and (out / "app/lib/link.py").read_text().startswith("def")


def test_a_good_tar_gz_extracts_with_links(workdir: Path) -> None:
    archive = make_tar(
        workdir / "good.tar.gz",
        [
            tar_member("./pkg", tarfile.DIRTYPE, mode=0o755),
            tar_member("./pkg/index.js", data=b"module.exports = 1\n"),
            tar_member("./pkg/copy.js", tarfile.LNKTYPE, link="pkg/index.js"),
            tar_member("./bin/run", tarfile.SYMTYPE, link="../pkg/index.js"),
        ],
    )
    out = workdir / "box" / "out"
    summary = extract_archive(archive, out, SMALL)
    assert summary.format == "tar.gz" and summary.expanded_bytes == 2 * len(b"module.exports = 1\n")
    assert (out / "pkg/copy.js").read_bytes() == b"module.exports = 1\n"
    assert not (out / "pkg/copy.js").is_symlink() and (out / "pkg/copy.js").stat().st_nlink == 1
    assert (out / "bin/run").resolve() == (out / "pkg/index.js").resolve()
    plain = make_tar(workdir / "plain.tar", [tar_member("a.txt", data=b"x")], gz=False)
    assert inspect_archive(plain, SMALL).format == "tar"


@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("../evil.py", r"'\.\.' in path"),
        ("app/../../evil.py", r"'\.\.' in path"),
        ("/etc/cron.d/evil", "absolute path"),
        ("C:/evil.py", "absolute path"),
        ("app\\..\\evil.py", "backslash"),
    ],
)
def test_zip_slip_paths_are_rejected(workdir: Path, name: str, match: str) -> None:
    assert_rejected(make_zip(workdir / "slip.zip", [("ok.py", b"ok", None), (name, b"x", None)]), workdir, match)


def test_tar_slip_paths_are_rejected(workdir: Path) -> None:
    archive = make_tar(workdir / "slip.tar.gz", [tar_member("ok.py", data=b"x"), tar_member("../../evil", data=b"x")])
    assert_rejected(archive, workdir, r"'\.\.' in path")


@pytest.mark.parametrize(
    ("members", "match"),
    [
        ([tar_member("etc", tarfile.SYMTYPE, link="/etc")], "absolute path '/etc'"),
        ([tar_member("up", tarfile.SYMTYPE, link="../../..")], "points outside"),
        ([tar_member("a/b/up", tarfile.SYMTYPE, link="../../../x")], "points outside"),
        # Each link stays inside on its own; resolved through each other they climb out.
        (
            [
                tar_member("sub", tarfile.DIRTYPE),
                tar_member("d", tarfile.SYMTYPE, link="sub"),
                tar_member("sub/e", tarfile.SYMTYPE, link=".."),
                tar_member("f", tarfile.SYMTYPE, link="d/e/.."),
            ],
            "'f': symbolic link to 'd/e/..' points outside",
        ),
        ([tar_member("loop", tarfile.SYMTYPE, link="loop/x")], "points outside"),
        # Writing through a link: the classic symlink-then-file attack.
        (
            [tar_member("link", tarfile.SYMTYPE, link="."), tar_member("link/evil", data=b"x")],
            "inside 'link', which is a symlink",
        ),
        ([tar_member("hard", tarfile.LNKTYPE, link="/etc/passwd")], "hard link to '/etc/passwd', which is outside"),
        ([tar_member("hard", tarfile.LNKTYPE, link="../outside")], "hard link to '../outside', which is outside"),
        ([tar_member("hard", tarfile.LNKTYPE, link="later.txt"), tar_member("later.txt", data=b"x")], "hard link"),
    ],
    ids=[
        "absolute-symlink",
        "relative-symlink-escape",
        "nested-symlink-escape",
        "symlink-chain-escape",
        "symlink-loop",
        "write-through-symlink",
        "hardlink-absolute",
        "hardlink-escape",
        "hardlink-forward",
    ],
)
def test_links_escaping_the_tree_are_rejected(workdir: Path, members: list[tuple], match: str) -> None:
    assert_rejected(make_tar(workdir / "links.tar.gz", [tar_member("ok", data=b"x"), *members]), workdir, match)


def test_zip_symlinks_escaping_are_rejected(workdir: Path) -> None:
    archive = make_zip(workdir / "link.zip", [("x", b"../../../etc/passwd", 0o120777)])
    assert_rejected(archive, workdir, "points outside")


@pytest.mark.parametrize(
    ("kind", "match"),
    [
        (tarfile.CHRTYPE, "character device"),
        (tarfile.BLKTYPE, "block device"),
        (tarfile.FIFOTYPE, "FIFO"),
    ],
)
def test_device_files_are_rejected(workdir: Path, kind: bytes, match: str) -> None:
    assert_rejected(make_tar(workdir / "dev.tar.gz", [tar_member("dev/sda", kind)]), workdir, match)


def test_zip_device_entries_are_rejected(workdir: Path) -> None:
    assert_rejected(make_zip(workdir / "dev.zip", [("null", b"", 0o20666)]), workdir, "character device")


def test_a_zip_bomb_is_rejected(workdir: Path) -> None:
    # 2 MiB of zeros in ~2 KiB: over the 1 MiB expansion limit by its declared sizes.
    archive = make_zip(workdir / "bomb.zip", [(f"zeros{i}", b"\0" * 512 * 1024, None) for i in range(4)])
    assert archive.stat().st_size < 20_000
    assert_rejected(archive, workdir, "expands to more than 1048576 bytes")


def test_a_tar_bomb_is_refused_at_the_expansion_limit(workdir: Path) -> None:
    # 64 MiB of zeros compresses to ~64 KiB; the stream is refused after ~1 MiB.
    path = workdir / "bomb.tar.gz"
    with gzip.open(path, "wb", compresslevel=9) as raw, tarfile.open(fileobj=raw, mode="w|") as archive:
        info = tarfile.TarInfo("zeros")
        info.size = 64 * 1024 * 1024

        class Zeros(io.RawIOBase):
            def readable(self) -> bool:
                return True

            def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
                buffer[:] = bytes(len(buffer))
                return len(buffer)

        archive.addfile(info, io.BufferedReader(Zeros()))
    assert path.stat().st_size < 200_000
    assert_rejected(path, workdir, "expands to more than")


def test_too_many_files_are_rejected(workdir: Path) -> None:
    archive = make_zip(workdir / "many.zip", [(f"f{i}", b"", None) for i in range(51)])
    assert_rejected(archive, workdir, "more than 50 entries")
    tar = make_tar(workdir / "many.tar.gz", [tar_member(f"f{i}") for i in range(51)])
    assert_rejected(tar, workdir, "more than 50 entries")


def test_an_oversized_archive_is_rejected(workdir: Path) -> None:
    archive = make_zip(workdir / "big.zip", [("a", b"x" * 100, None)])
    assert_rejected(archive, workdir, "the limit is 50 bytes", ArchiveLimits(max_archive_bytes=50))


def test_corrupt_and_foreign_files_are_rejected(workdir: Path) -> None:
    good = make_zip(workdir / "good.zip", [("handler.py", b"x" * 1000, None)]).read_bytes()
    truncated = workdir / "truncated.zip"
    truncated.write_bytes(good[: len(good) // 2])
    assert_rejected(truncated, workdir, "corrupt zip")
    corrupted = workdir / "corrupted.zip"
    corrupted.write_bytes(good[:40] + bytes(b ^ 0xFF for b in good[40:60]) + good[60:])
    with pytest.raises(ArchiveError, match="corrupt"):
        extract_archive(corrupted, workdir / "box" / "out", SMALL)
    assert list((workdir / "box" / "out").iterdir()) == []
    bad_gzip = workdir / "bad.tar.gz"
    bad_gzip.write_bytes(b"\x1f\x8b" + b"\0" * 100)
    assert_rejected(bad_gzip, workdir, "corrupt tar.gz")
    text = workdir / "notes.txt"
    text.write_text("hello")
    assert_rejected(text, workdir, "not a zip, tar or tar.gz archive")


def test_duplicates_and_file_directory_clashes_are_rejected(workdir: Path) -> None:
    twice = make_tar(workdir / "twice.tar.gz", [tar_member("a", data=b"1"), tar_member("a", data=b"2")])
    assert_rejected(twice, workdir, "appears twice")
    clash = make_tar(workdir / "clash.tar.gz", [tar_member("a/b", data=b"1"), tar_member("a", data=b"2")])
    assert_rejected(clash, workdir, "other entries are inside it")
    under_file = make_tar(workdir / "under.tar.gz", [tar_member("a", data=b"1"), tar_member("a/b", data=b"2")])
    assert_rejected(under_file, workdir, "inside 'a', which is a file")


def test_extraction_needs_an_empty_directory(workdir: Path) -> None:
    archive = make_zip(workdir / "good.zip", [("a", b"x", None)])
    (workdir / "box" / "out" / "existing").write_text("keep")
    with pytest.raises(ArchiveError, match="not empty"):
        extract_archive(archive, workdir / "box" / "out", SMALL)
    assert (workdir / "box" / "out" / "existing").read_text() == "keep"
    with pytest.raises(ArchiveError, match="not a directory"):
        extract_archive(archive, workdir / "missing", SMALL)
