"""Every read and write of Morty's state. Writes take an open transaction (`Database.transaction`);
each function here does one consistent change, or raises a `MortyError` and changes nothing."""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime

import semver
from sqlalchemy import and_, delete, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from morty.api.errors import Conflict, Invalid, NotFound
from morty.api.keys import SecretBox
from morty.api.models import (
    CONFIG_FIELDS,
    ENV_PATTERN,
    RESERVED_ALIASES,
    Alias,
    AliasCreate,
    BatchResult,
    Build,
    BuildStatus,
    BuildSummary,
    Function,
    FunctionConfig,
    FunctionCreate,
    FunctionDeleted,
    FunctionPatch,
    Invocation,
    InvocationBatch,
    InvocationPage,
    InvocationPath,
    Resolution,
    Secret,
    Version,
    VersionCreate,
    VersionStatus,
    is_name,
    parse_version,
)
from morty.api.tables import (
    AliasRow,
    BuildRow,
    FunctionRow,
    InstanceRow,
    InvocationRow,
    LogRow,
    SecretRow,
    VersionRow,
)
from servicekit.database import as_utc

INTERRUPTED = "interrupted by a restart of Morty APIs; queued again"


def now() -> datetime:
    return datetime.now(UTC)


aware = as_utc


def _maybe_aware(value: datetime | None) -> datetime | None:
    return None if value is None else aware(value)


def new_id() -> str:
    return uuid.uuid4().hex


def _semver_or_none(value: str) -> semver.Version | None:
    try:
        return parse_version(value)
    except ValueError:
        return None


# Functions -------------------------------------------------------------------------------------------------


async def function_row(session: AsyncSession, name: str, *, lock: bool = False) -> FunctionRow:
    row = None
    if is_name(name):
        query = select(FunctionRow).where(FunctionRow.name == name)
        row = await session.scalar(query.with_for_update() if lock else query)
    if row is None:
        raise NotFound(f"no function named {name[:80]!r}")
    return row


def _highest(versions: Sequence[str]) -> str | None:
    parsed = [(v, _semver_or_none(v)) for v in versions]
    valid = [(v, p) for v, p in parsed if p is not None]
    return max(valid, key=lambda item: item[1])[0] if valid else None


def _function(row: FunctionRow, secrets: list[str], ready: list[str]) -> Function:
    return Function(
        name=row.name,
        secrets=sorted(secrets),
        latest_version=_highest(ready),
        created_at=aware(row.created_at),
        updated_at=aware(row.updated_at),
        **_config(row).model_dump(),
    )


def _config(row: FunctionRow) -> FunctionConfig:
    return FunctionConfig.model_validate({field: getattr(row, field) for field in CONFIG_FIELDS})


async def _describe(session: AsyncSession, rows: Sequence[FunctionRow]) -> list[Function]:
    ids = [row.id for row in rows]
    secrets: dict[str, list[str]] = defaultdict(list)
    ready: dict[str, list[str]] = defaultdict(list)
    if ids:
        for function_id, name in await session.execute(
            select(SecretRow.function_id, SecretRow.name).where(SecretRow.function_id.in_(ids))
        ):
            secrets[function_id].append(name)
        for function_id, version in await session.execute(
            select(VersionRow.function_id, VersionRow.version).where(
                VersionRow.function_id.in_(ids), VersionRow.status == VersionStatus.READY.value
            )
        ):
            ready[function_id].append(version)
    return [_function(row, secrets[row.id], ready[row.id]) for row in rows]


def _check_limits(min_instances: int, max_instances: int) -> None:
    if max_instances < min_instances:
        raise Invalid.field("max_instances", f"must be >= min_instances ({min_instances}), got {max_instances}")


async def create_function(session: AsyncSession, request: FunctionCreate) -> Function:
    _check_limits(request.min_instances, request.max_instances)
    if await session.scalar(select(FunctionRow.id).where(FunctionRow.name == request.name)) is not None:
        raise Conflict(f"function {request.name!r} already exists")
    stamp = now()
    row = FunctionRow(
        id=new_id(),
        name=request.name,
        created_at=stamp,
        updated_at=stamp,
        **request.model_dump(mode="json", include=set(CONFIG_FIELDS)),
    )
    session.add(row)
    await session.flush()
    return _function(row, [], [])


async def list_functions(session: AsyncSession) -> list[Function]:
    rows = (await session.scalars(select(FunctionRow).order_by(FunctionRow.name))).all()
    return await _describe(session, rows)


async def get_function(session: AsyncSession, name: str) -> Function:
    return (await _describe(session, [await function_row(session, name)]))[0]


async def function_config(session: AsyncSession, name: str) -> FunctionConfig:
    return _config(await function_row(session, name))


async def update_function(session: AsyncSession, name: str, patch: FunctionPatch) -> Function:
    row = await function_row(session, name, lock=True)
    changes = patch.model_dump(mode="json", exclude_unset=True)
    _check_limits(
        changes.get("min_instances", row.min_instances),
        changes.get("max_instances", row.max_instances),
    )
    if "env" in changes:
        secrets = set((await session.scalars(select(SecretRow.name).where(SecretRow.function_id == row.id))).all())
        clash = sorted(secrets & set(changes["env"]))
        if clash:
            raise Conflict(f"env sets {', '.join(clash)}, which {'is a secret' if len(clash) == 1 else 'are secrets'}")
    if changes:
        for field, value in changes.items():
            setattr(row, field, value)
        row.updated_at = now()
        await session.flush()
    return await get_function(session, name)


async def delete_function(session: AsyncSession, name: str) -> tuple[FunctionDeleted, list[str]]:
    """Delete the function and everything recorded for it: secrets, versions, aliases, builds and
    invocation records. Returns the code objects' keys; the caller deletes them once committed.

    Instances, orchestrator workloads and images are removed by the caller (they are not records)."""
    row = await function_row(session, name, lock=True)
    keys = list((await session.scalars(select(VersionRow.code_key).where(VersionRow.function_id == row.id))).all())
    counts: dict[str, int] = {}
    await session.execute(delete(InstanceRow).where(InstanceRow.function_id == row.id))
    await session.execute(delete(LogRow).where(LogRow.function_id == row.id))
    for label, table in (
        ("aliases", AliasRow),
        ("builds", BuildRow),
        ("secrets", SecretRow),
        ("invocations", InvocationRow),
        ("versions", VersionRow),
    ):
        result = await session.execute(delete(table).where(table.function_id == row.id))
        counts[label] = int(result.rowcount)  # type: ignore[attr-defined]
    await session.delete(row)
    await session.flush()
    return FunctionDeleted(name=name, code_objects=len(keys), **counts), keys


async def deployment_keys(session: AsyncSession, function_id: str) -> list[str]:
    """The orchestrator keys of the function's versions that were (or are being) deployed."""
    keys = await session.scalars(
        select(VersionRow.deployment_key).where(
            VersionRow.function_id == function_id, VersionRow.deployment_key.is_not(None)
        )
    )
    return [key for key in keys.all() if key is not None]


async def version_images(session: AsyncSession, function_id: str) -> list[tuple[str, str]]:
    """(image, digest) of every built version of the function, each digest once."""
    rows = await session.execute(
        select(VersionRow.image, VersionRow.digest).where(
            VersionRow.function_id == function_id, VersionRow.image.is_not(None), VersionRow.digest.is_not(None)
        )
    )
    unique: dict[str, str] = {}
    for image, digest in rows:
        if image is not None and digest is not None:
            unique.setdefault(digest, image)
    return [(image, digest) for digest, image in unique.items()]


# Secrets ---------------------------------------------------------------------------------------------------


def _secret_name(key: str) -> str:
    if not re.fullmatch(ENV_PATTERN, key):
        raise Invalid.field("key", f"{key[:80]!r} is not an environment variable name ([A-Za-z_][A-Za-z0-9_]*)")
    return key


def _context(function_id: str, key: str) -> str:
    return f"{function_id}/{key}"


def _secret(row: SecretRow) -> Secret:
    return Secret(name=row.name, created_at=aware(row.created_at), updated_at=aware(row.updated_at))


async def put_secret(session: AsyncSession, box: SecretBox, name: str, key: str, value: str) -> tuple[Secret, bool]:
    function = await function_row(session, name, lock=True)
    _secret_name(key)
    if key in function.env:
        raise Conflict(f"{key} is set in the function's env; a secret cannot have the same name")
    stamp = now()
    ciphertext = box.encrypt(value, _context(function.id, key))
    row = await session.get(SecretRow, (function.id, key))
    created = row is None
    if row is None:
        row = SecretRow(function_id=function.id, name=key, ciphertext=ciphertext, created_at=stamp, updated_at=stamp)
        session.add(row)
    else:
        row.ciphertext = ciphertext
        row.updated_at = stamp
    await session.flush()
    return _secret(row), created


async def delete_secret(session: AsyncSession, name: str, key: str) -> None:
    function = await function_row(session, name)
    row = await session.get(SecretRow, (function.id, key)) if re.fullmatch(ENV_PATTERN, key) else None
    if row is None:
        raise NotFound(f"function {name!r} has no secret {key[:80]!r}")
    await session.delete(row)


async def list_secrets(session: AsyncSession, name: str) -> list[Secret]:
    function = await function_row(session, name)
    rows = await session.scalars(select(SecretRow).where(SecretRow.function_id == function.id).order_by(SecretRow.name))
    return [_secret(row) for row in rows]


async def secret_values(session: AsyncSession, box: SecretBox, name: str) -> dict[str, str]:
    """The decrypted secrets, for the orchestrator to give an instance as environment. Never sent
    by the HTTP API."""
    function = await function_row(session, name)
    rows = await session.scalars(select(SecretRow).where(SecretRow.function_id == function.id))
    return {row.name: box.decrypt(row.ciphertext, _context(function.id, row.name)) for row in rows}


# Versions --------------------------------------------------------------------------------------------------


def _version(function: str, row: VersionRow) -> Version:
    return Version(
        function=function,
        version=row.version,
        description=row.description,
        status=VersionStatus(row.status),
        status_message=row.status_message,
        size_bytes=row.size_bytes,
        sha256=row.sha256,
        image=row.image,
        digest=row.digest,
        created_at=aware(row.created_at),
        uploaded_at=_maybe_aware(row.uploaded_at),
        ready_at=_maybe_aware(row.ready_at),
    )


async def create_version(session: AsyncSession, name: str, request: VersionCreate) -> tuple[Version, str]:
    """A new version awaiting its upload; returns it and the key its code will be stored under."""
    function = await function_row(session, name, lock=True)
    existing = await session.scalar(
        select(VersionRow.id).where(VersionRow.function_id == function.id, VersionRow.version == request.version)
    )
    if existing is not None:
        raise Conflict(f"version {request.version} of {name!r} already exists; versions are immutable")
    version_id = new_id()
    row = VersionRow(
        id=version_id,
        function_id=function.id,
        version=request.version,
        description=request.description,
        status=VersionStatus.AWAITING_UPLOAD.value,
        status_message="waiting for the code archive to be uploaded",
        code_key=f"{function.id}/{version_id}.archive",
        created_at=now(),
    )
    session.add(row)
    await session.flush()
    return _version(name, row), row.code_key


async def version_row(session: AsyncSession, function: FunctionRow, version: str, *, lock: bool = False) -> VersionRow:
    query = select(VersionRow).where(VersionRow.function_id == function.id, VersionRow.version == version)
    row = await session.scalar(query.with_for_update() if lock else query) if len(version) <= 64 else None
    if row is None:
        raise NotFound(f"function {function.name!r} has no version {version[:80]!r}")
    return row


async def list_versions(session: AsyncSession, name: str) -> list[Version]:
    function = await function_row(session, name)
    rows = (await session.scalars(select(VersionRow).where(VersionRow.function_id == function.id))).all()
    ordered = sorted(rows, key=lambda r: parse_version(r.version), reverse=True)
    return [_version(name, row) for row in ordered]


async def get_version(session: AsyncSession, name: str, version: str) -> Version:
    return _version(name, await version_row(session, await function_row(session, name), version))


async def upload_key(session: AsyncSession, name: str, version: str) -> str:
    """The code key of a version still awaiting its upload (to issue a new upload URL)."""
    row = await version_row(session, await function_row(session, name), version)
    if row.status != VersionStatus.AWAITING_UPLOAD.value:
        raise Conflict(
            f"version {version} of {name!r} is already uploaded (status {row.status}); versions are immutable"
        )
    return row.code_key


async def version_by_key(session: AsyncSession, key: str, *, lock: bool = False) -> tuple[FunctionRow, VersionRow]:
    query = select(VersionRow).where(VersionRow.code_key == key)
    row = await session.scalar(query.with_for_update() if lock else query)
    function = await session.get(FunctionRow, row.function_id) if row is not None else None
    if row is None or function is None:
        raise NotFound("the version this upload URL was issued for no longer exists")
    return function, row


def _check_awaiting(function: FunctionRow, row: VersionRow) -> None:
    if row.status != VersionStatus.AWAITING_UPLOAD.value:
        raise Conflict(
            f"version {row.version} of {function.name!r} is already uploaded (status {row.status}); "
            "versions are immutable: create a new version"
        )


async def check_upload_allowed(session: AsyncSession, key: str) -> None:
    function, row = await version_by_key(session, key)
    _check_awaiting(function, row)


async def record_upload(
    session: AsyncSession, key: str, *, size: int, sha256: str | None
) -> tuple[Version, BuildSummary]:
    """The archive for `key` is stored: the version becomes `uploaded` and a build is queued."""
    function, row = await version_by_key(session, key, lock=True)
    _check_awaiting(function, row)
    stamp = now()
    row.status = VersionStatus.UPLOADED.value
    row.status_message = "code uploaded; build queued"
    row.size_bytes = size
    row.sha256 = sha256
    row.uploaded_at = stamp
    build = BuildRow(
        id=new_id(),
        function_id=function.id,
        version_id=row.id,
        status=BuildStatus.QUEUED.value,
        message="queued",
        log="",
        created_at=stamp,
    )
    session.add(build)
    await session.flush()
    return _version(function.name, row), _build_summary(function.name, row.version, build)


async def confirm_target(session: AsyncSession, name: str, version: str) -> tuple[str, bool]:
    """(code key, still awaiting upload) for a confirm call."""
    row = await version_row(session, await function_row(session, name), version)
    return row.code_key, row.status == VersionStatus.AWAITING_UPLOAD.value


# Builds ----------------------------------------------------------------------------------------------------


def _build_summary(function: str, version: str, row: BuildRow) -> BuildSummary:
    return BuildSummary(
        id=row.id,
        function=function,
        version=version,
        status=BuildStatus(row.status),
        message=row.message,
        image=row.image,
        digest=row.digest,
        created_at=aware(row.created_at),
        started_at=_maybe_aware(row.started_at),
        finished_at=_maybe_aware(row.finished_at),
    )


async def list_builds(session: AsyncSession, name: str) -> list[BuildSummary]:
    function = await function_row(session, name)
    rows = await session.execute(
        select(BuildRow, VersionRow.version)
        .join(VersionRow, VersionRow.id == BuildRow.version_id)
        .where(BuildRow.function_id == function.id)
        .order_by(BuildRow.created_at.desc(), BuildRow.id)
    )
    return [_build_summary(name, version, row) for row, version in rows]


async def latest_build(session: AsyncSession, name: str, version: str) -> BuildSummary | None:
    function = await function_row(session, name)
    row = await version_row(session, function, version)
    build = await session.scalar(
        select(BuildRow).where(BuildRow.version_id == row.id).order_by(BuildRow.created_at.desc()).limit(1)
    )
    return None if build is None else _build_summary(name, version, build)


async def get_build(session: AsyncSession, name: str, build_id: str) -> Build:
    function = await function_row(session, name)
    found = (
        await session.execute(
            select(BuildRow, VersionRow.version)
            .join(VersionRow, VersionRow.id == BuildRow.version_id)
            .where(BuildRow.function_id == function.id, BuildRow.id == build_id[:32])
        )
    ).first()
    if found is None:
        raise NotFound(f"function {name!r} has no build {build_id[:80]!r}")
    row, version = found
    return Build(log=row.log, **_build_summary(name, version, row).model_dump())


async def _build_for_update(session: AsyncSession, build_id: str) -> tuple[BuildRow, VersionRow]:
    row = await session.scalar(select(BuildRow).where(BuildRow.id == build_id).with_for_update())
    version = await session.get(VersionRow, row.version_id) if row is not None else None
    if row is None or version is None:
        raise NotFound(f"no build {build_id[:80]!r}")
    return row, version


async def start_build(session: AsyncSession, build_id: str) -> None:
    """For the builder: a queued build starts running; its version is `building`."""
    row, version = await _build_for_update(session, build_id)
    if row.status != BuildStatus.QUEUED.value:
        raise Conflict(f"build {build_id} is {row.status}, not queued")
    row.status = BuildStatus.RUNNING.value
    row.message = "running"
    row.started_at = now()
    version.status = VersionStatus.BUILDING.value
    version.status_message = f"build {build_id} running"


async def append_build_log(session: AsyncSession, build_id: str, text: str) -> None:
    """For the builder: append to the build's log (kept whole, whatever the outcome)."""
    row, _ = await _build_for_update(session, build_id)
    row.log += text


async def finish_build(
    session: AsyncSession,
    build_id: str,
    *,
    succeeded: bool,
    message: str,
    image: str | None = None,
    digest: str | None = None,
    deploy: bool = False,
) -> None:
    """For the builder: a running build ends; its version becomes `failed` (with the build's message) or, with
    its image, `deploying` when an orchestrator will deploy it (`deploy`), else `ready`."""
    row, version = await _build_for_update(session, build_id)
    if row.status != BuildStatus.RUNNING.value:
        raise Conflict(f"build {build_id} is {row.status}, not running")
    stamp = now()
    row.status = (BuildStatus.SUCCEEDED if succeeded else BuildStatus.FAILED).value
    row.message = message
    row.finished_at = stamp
    row.image, row.digest = image, digest
    if succeeded:
        version.image, version.digest = image, digest
        if deploy:
            version.status = VersionStatus.DEPLOYING.value
            version.status_message = "built; deploying"
        else:
            version.status = VersionStatus.READY.value
            version.status_message = "ready"
            version.ready_at = stamp
    else:
        version.status = VersionStatus.FAILED.value
        version.status_message = f"build {build_id} failed: {message}"


async def cancel_queued_build(session: AsyncSession, build_id: str) -> None:
    """A build no builder holds yet is cancelled where it stands: it fails as cancelled, and so does its version."""
    row, _ = await _build_for_update(session, build_id)
    if row.status != BuildStatus.QUEUED.value:
        raise Conflict(f"build {build_id} is {row.status}; only a queued build or one running here can be cancelled")
    await start_build(session, build_id)
    await append_build_log(session, build_id, "build cancelled before it started\n")
    await finish_build(session, build_id, succeeded=False, message="cancelled")


async def requeue_interrupted_builds(session: AsyncSession) -> list[str]:
    """At start: builds left `running` by a previous process go back to `queued` (with a line in
    their log), their versions back to `uploaded`. Returns every queued build, oldest first."""
    running = (await session.scalars(select(BuildRow).where(BuildRow.status == BuildStatus.RUNNING.value))).all()
    for row in running:
        row.status = BuildStatus.QUEUED.value
        row.message = INTERRUPTED
        row.log += f"\n[{now().isoformat()}] {INTERRUPTED}\n"
        row.started_at = None
        version = await session.get(VersionRow, row.version_id)
        if version is not None and version.status == VersionStatus.BUILDING.value:
            version.status = VersionStatus.UPLOADED.value
            version.status_message = "code uploaded; build queued"
    queued = await session.scalars(
        select(BuildRow.id).where(BuildRow.status == BuildStatus.QUEUED.value).order_by(BuildRow.created_at)
    )
    return list(queued.all())


# Aliases and resolution ------------------------------------------------------------------------------------


def _alias(function: str, row: AliasRow, version: str) -> Alias:
    return Alias(
        function=function,
        name=row.name,
        version=version,
        created_at=aware(row.created_at),
        updated_at=aware(row.updated_at),
    )


async def _alias_target(session: AsyncSession, function: FunctionRow, version: str) -> VersionRow:
    row = await version_row(session, function, version)
    if row.status == VersionStatus.FAILED.value:
        raise Conflict(f"version {version} of {function.name!r} failed its build; an alias cannot point at it")
    return row


async def create_alias(session: AsyncSession, name: str, request: AliasCreate) -> Alias:
    function = await function_row(session, name, lock=True)
    if request.name in RESERVED_ALIASES:
        raise Invalid.field("name", f"{request.name!r} is reserved")
    if await session.get(AliasRow, (function.id, request.name)) is not None:
        raise Conflict(f"alias {request.name!r} of {name!r} already exists; update it with PATCH")
    target = await _alias_target(session, function, request.version)
    stamp = now()
    row = AliasRow(function_id=function.id, name=request.name, version_id=target.id, created_at=stamp, updated_at=stamp)
    session.add(row)
    await session.flush()
    return _alias(name, row, target.version)


async def _alias_row(session: AsyncSession, function: FunctionRow, alias: str) -> AliasRow:
    row = await session.get(AliasRow, (function.id, alias)) if len(alias) <= 63 else None
    if row is None:
        raise NotFound(f"function {function.name!r} has no alias {alias[:80]!r}")
    return row


async def update_alias(session: AsyncSession, name: str, alias: str, version: str) -> Alias:
    function = await function_row(session, name, lock=True)
    row = await _alias_row(session, function, alias)
    target = await _alias_target(session, function, version)
    if row.version_id != target.id:
        row.version_id = target.id
        row.updated_at = now()
    await session.flush()
    return _alias(name, row, target.version)


async def delete_alias(session: AsyncSession, name: str, alias: str) -> None:
    function = await function_row(session, name, lock=True)
    await session.delete(await _alias_row(session, function, alias))


async def list_aliases(session: AsyncSession, name: str) -> list[Alias]:
    function = await function_row(session, name)
    rows = await session.execute(
        select(AliasRow, VersionRow.version)
        .join(VersionRow, VersionRow.id == AliasRow.version_id)
        .where(AliasRow.function_id == function.id)
        .order_by(AliasRow.name)
    )
    return [_alias(name, row, version) for row, version in rows]


async def get_alias(session: AsyncSession, name: str, alias: str) -> Alias:
    function = await function_row(session, name)
    row = await _alias_row(session, function, alias)
    version = await session.get(VersionRow, row.version_id)
    assert version is not None  # the foreign key guarantees it
    return _alias(name, row, version.version)


async def resolve(session: AsyncSession, ref: str) -> Resolution:
    """`name` or `name@latest`: the highest ready version; `name@1.2.3`: that version;
    `name@alias`: the version the alias points at."""
    name, _, target = ref.partition("@")
    function = await function_row(session, name)
    via: str
    alias: str | None = None
    if target in ("", "latest"):
        ready = (
            await session.scalars(
                select(VersionRow.version).where(
                    VersionRow.function_id == function.id, VersionRow.status == VersionStatus.READY.value
                )
            )
        ).all()
        latest = _highest(ready)
        if latest is None:
            raise NotFound(f"function {name!r} has no ready version yet")
        row, via = await version_row(session, function, latest), "latest"
    elif _semver_or_none(target) is not None:
        row, via = await version_row(session, function, target), "version"
    else:
        alias_row = await _alias_row(session, function, target)
        found = await session.get(VersionRow, alias_row.version_id)
        assert found is not None  # the foreign key guarantees it
        row, via, alias = found, "alias", target
    return Resolution(
        function=name,
        version=row.version,
        via=via,
        alias=alias,
        status=VersionStatus(row.status),
        image=row.image,
        digest=row.digest,
        config=_config(function),
    )


# Invocation records ----------------------------------------------------------------------------------------


async def record_invocations(session: AsyncSession, batch: InvocationBatch) -> BatchResult:
    """Store a batch; records of functions that do not exist (or are deleted meanwhile) are dropped.

    The functions' rows are share-locked (`FOR KEY SHARE` on PostgreSQL): a concurrent `delete_function`
    either waits for this batch and then deletes its records too, or commits first and its records are
    dropped here. Without the lock the batch's inserts failed on the foreign key, and the whole batch
    (other functions' records included) was refused."""
    names = {record.function for record in batch.records}
    found = await session.execute(
        select(FunctionRow.name, FunctionRow.id)
        .where(FunctionRow.name.in_(names))
        .with_for_update(read=True, key_share=True)
    )
    ids = {name: function_id for name, function_id in found}
    wanted = [record.id for record in batch.records]
    seen = set((await session.scalars(select(InvocationRow.id).where(InvocationRow.id.in_(wanted)))).all())
    accepted = duplicates = 0
    stamp = now()
    for record in batch.records:
        function_id = ids.get(record.function)
        if function_id is None:
            continue
        if record.id in seen:
            duplicates += 1
            continue
        seen.add(record.id)
        session.add(
            InvocationRow(
                function_id=function_id,
                received_at=stamp,
                **record.model_dump(exclude={"function", "started_at", "finished_at", "path"}),
                started_at=record.started_at.astimezone(UTC),
                finished_at=record.finished_at.astimezone(UTC),
                path=record.path.value,
            )
        )
        accepted += 1
    await session.flush()
    return BatchResult(accepted=accepted, duplicates=duplicates, unknown_functions=sorted(names - set(ids)))


def _encode_cursor(started_at: datetime, seq: int) -> str:
    return base64.urlsafe_b64encode(f"{aware(started_at).isoformat()}|{seq}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, int]:
    try:
        started, _, seq = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode().partition("|")
        return aware(datetime.fromisoformat(started)), int(seq)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise Invalid.field("cursor", "not a cursor returned by this API") from None


def _status_filter(status: str) -> tuple[int, int]:
    if re.fullmatch(r"[1-5][0-9]{2}", status):
        return int(status), int(status)
    if re.fullmatch(r"[1-5]xx", status):
        return int(status[0]) * 100, int(status[0]) * 100 + 99
    raise Invalid.field("status", "expected an HTTP status (e.g. 503) or a class (e.g. 5xx)")


async def list_invocations(
    session: AsyncSession, name: str, *, status: str | None, limit: int, cursor: str | None
) -> InvocationPage:
    function = await function_row(session, name)
    query = select(InvocationRow).where(InvocationRow.function_id == function.id)
    if status is not None:
        low, high = _status_filter(status)
        query = query.where(InvocationRow.status.between(low, high))
    if cursor:
        started, seq = _decode_cursor(cursor)
        query = query.where(
            or_(
                InvocationRow.started_at < started,
                and_(InvocationRow.started_at == started, InvocationRow.seq < seq),
            )
        )
    rows = (
        await session.scalars(
            query.order_by(InvocationRow.started_at.desc(), InvocationRow.seq.desc()).limit(limit + 1)
        )
    ).all()
    page = rows[:limit]
    items = [
        Invocation(
            id=row.id,
            function=name,
            version=row.version,
            status=row.status,
            started_at=aware(row.started_at),
            finished_at=aware(row.finished_at),
            duration_ms=(aware(row.finished_at) - aware(row.started_at)).total_seconds() * 1000,
            queue_ms=row.queue_ms,
            provision_ms=row.provision_ms,
            upstream_ms=row.upstream_ms,
            path=InvocationPath(row.path),
            instance=row.instance,
            bytes_in=row.bytes_in,
            bytes_out=row.bytes_out,
            received_at=aware(row.received_at),
        )
        for row in page
    ]
    more = len(rows) > limit
    return InvocationPage(items=items, next_cursor=_encode_cursor(page[-1].started_at, page[-1].seq) if more else None)


async def count_functions(session: AsyncSession) -> int:
    return int(await session.scalar(select(func.count()).select_from(FunctionRow)) or 0)
