"""The API's request and response bodies (pydantic v2). Inputs forbid unknown fields, so a typo is
an error naming the field rather than a silently ignored setting."""

from __future__ import annotations

import enum
import re
from datetime import datetime
from typing import Annotated, Any, Literal

import semver
from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from morty.api import runtimes

NAME_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
ALIAS_PATTERN = r"^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$"
ENV_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"
VERSION_PATTERN = r"^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)(-[0-9A-Za-z.-]+)?$"
RECORD_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,64}$"
INSTANCE_PATTERN = r"^[A-Za-z0-9._:/-]{1,128}$"
RESERVED_ALIASES = {"latest"}


def _matches(pattern: str, what: str) -> AfterValidator:
    compiled = re.compile(pattern)

    def check(value: str) -> str:
        if not compiled.fullmatch(value):
            raise ValueError(f"{value[:80]!r} is not {what}")
        return value

    return AfterValidator(check)


def is_name(value: str) -> bool:
    return re.fullmatch(NAME_PATTERN, value) is not None


def parse_version(value: str) -> semver.Version:
    """A semantic version `MAJOR.MINOR.PATCH[-PRERELEASE]`. Build metadata (`+...`) is refused: two
    versions differing only by it would have the same precedence, and `latest` would be ambiguous."""
    if "+" in value:
        raise ValueError(f"{value[:80]!r}: build metadata ('+...') is not allowed in a version")
    if len(value) > 64 or not re.fullmatch(VERSION_PATTERN, value):
        raise ValueError(f"{value[:80]!r} is not a semantic version such as 1.2.3 or 1.2.3-rc.1")
    try:
        return semver.Version.parse(value)
    except ValueError:
        raise ValueError(f"{value[:80]!r} is not a semantic version such as 1.2.3 or 1.2.3-rc.1") from None


def _version(value: str) -> str:
    parse_version(value)
    return value


def _runtime(value: str) -> str:
    if runtimes.get_runtime(value) is None:
        raise ValueError(f"unknown runtime {value[:80]!r}; known runtimes: {runtimes.known()}")
    return value


def _env(value: dict[str, str]) -> dict[str, str]:
    for key, item in value.items():
        if not re.fullmatch(ENV_PATTERN, key):
            raise ValueError(f"{key[:80]!r} is not an environment variable name ([A-Za-z_][A-Za-z0-9_]*)")
        if "\x00" in item:
            raise ValueError(f"value of {key} contains a NUL character")
    return value


FunctionName = Annotated[
    str,
    Field(max_length=63, json_schema_extra={"pattern": NAME_PATTERN}),
    _matches(NAME_PATTERN, "a DNS label (lowercase letters, digits and '-', 1-63, alphanumeric at both ends)"),
]
AliasName = Annotated[
    str,
    Field(max_length=63, json_schema_extra={"pattern": ALIAS_PATTERN}),
    _matches(ALIAS_PATTERN, "an alias name (lowercase letters, digits and '-', starting with a letter)"),
]
VersionString = Annotated[str, Field(max_length=64, examples=["1.2.3"]), AfterValidator(_version)]
RuntimeName = Annotated[
    str, Field(max_length=64, json_schema_extra={"enum": sorted(runtimes.RUNTIMES)}), AfterValidator(_runtime)
]
Env = Annotated[
    dict[Annotated[str, Field(max_length=128)], Annotated[str, Field(max_length=32768)]],
    Field(max_length=256),
    AfterValidator(_env),
]
MemoryMiB = Annotated[int, Field(ge=64, le=65536, description="memory per instance, MiB")]
Vcpus = Annotated[int, Field(ge=1, le=64, description="virtual CPUs per instance")]
TimeoutSeconds = Annotated[int, Field(ge=1, le=3600, description="longest an invocation may run, seconds")]
MinInstances = Annotated[int, Field(ge=0, le=1000, description="instances kept alive even when idle")]
MaxInstances = Annotated[int, Field(ge=1, le=1000, description="most instances at once; >= min_instances")]
Concurrency = Annotated[int, Field(ge=1, le=1000, description="invocations one instance serves at once")]
IdleTimeoutSeconds = Annotated[int, Field(ge=1, le=86400, description="idle time before an instance stops")]


class Isolation(enum.StrEnum):
    VM = "vm"
    CONTAINER = "container"


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Output(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class ErrorBody(BaseModel):
    error: str
    detail: Any = None


# Functions -------------------------------------------------------------------------------------------------


class FunctionCreate(_Input):
    """A new function: its name, runtime and configuration (defaults for what is left out)."""

    name: FunctionName
    runtime: RuntimeName
    isolation: Isolation = Isolation.VM
    env: Env = Field(default_factory=dict)
    memory_mib: MemoryMiB = 256
    vcpus: Vcpus = 1
    timeout_seconds: TimeoutSeconds = 30
    min_instances: MinInstances = 0
    max_instances: MaxInstances = 10
    concurrency: Concurrency = 1
    idle_timeout_seconds: IdleTimeoutSeconds = 300


class FunctionConfig(_Output):
    """A function's configuration as stored."""

    runtime: str
    isolation: Isolation
    env: dict[str, str]
    memory_mib: int
    vcpus: int
    timeout_seconds: int
    min_instances: int
    max_instances: int
    concurrency: int
    idle_timeout_seconds: int


CONFIG_FIELDS = tuple(FunctionConfig.model_fields)


LEFT_OUT: Any = None
"""Default of PATCH fields: marks a field the request left out (typed Any: it is never validated)."""


def _no_defaults(schema: dict[str, Any]) -> None:
    for prop in schema.get("properties", {}).values():
        prop.pop("default", None)


class FunctionPatch(_Input):
    """Fields to change; those left out keep their value. `null` is not a value of any field.

    (The `None` defaults only mark a field as left out: they are not validated, and
    `model_dump(exclude_unset=True)` never returns them.)"""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_no_defaults)

    runtime: RuntimeName = Field(default=LEFT_OUT)
    isolation: Isolation = Field(default=LEFT_OUT)
    env: Env = Field(default=LEFT_OUT)
    memory_mib: MemoryMiB = Field(default=LEFT_OUT)
    vcpus: Vcpus = Field(default=LEFT_OUT)
    timeout_seconds: TimeoutSeconds = Field(default=LEFT_OUT)
    min_instances: MinInstances = Field(default=LEFT_OUT)
    max_instances: MaxInstances = Field(default=LEFT_OUT)
    concurrency: Concurrency = Field(default=LEFT_OUT)
    idle_timeout_seconds: IdleTimeoutSeconds = Field(default=LEFT_OUT)


class Function(FunctionConfig):
    name: str
    secrets: list[str] = Field(description="names of the function's secrets (values are never returned)")
    latest_version: str | None = Field(description="the highest ready version, what `latest` resolves to")
    created_at: datetime
    updated_at: datetime


class FunctionList(BaseModel):
    items: list[Function]


class FunctionDeleted(BaseModel):
    name: str
    versions: int
    aliases: int
    builds: int
    secrets: int
    invocations: int
    code_objects: int


# Secrets ---------------------------------------------------------------------------------------------------


class SecretValue(_Input):
    value: Annotated[str, Field(max_length=65536)]

    @model_validator(mode="after")
    def _no_nul(self) -> SecretValue:
        if "\x00" in self.value:
            raise ValueError("value: contains a NUL character, which an environment variable cannot hold")
        return self


class Secret(_Output):
    name: str
    created_at: datetime
    updated_at: datetime


class SecretList(BaseModel):
    items: list[Secret]


# Versions, uploads, builds --------------------------------------------------------------------------------


class VersionStatus(enum.StrEnum):
    AWAITING_UPLOAD = "awaiting_upload"
    UPLOADED = "uploaded"
    BUILDING = "building"
    DEPLOYING = "deploying"
    READY = "ready"
    FAILED = "failed"


class BuildStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class VersionCreate(_Input):
    version: VersionString
    description: Annotated[str, Field(max_length=1024)] = ""


class UploadTarget(BaseModel):
    url: str
    method: Literal["PUT"] = "PUT"
    headers: dict[str, str]
    expires_at: datetime
    max_bytes: int


class Version(_Output):
    function: str
    version: str
    description: str
    status: VersionStatus
    status_message: str
    size_bytes: int | None
    sha256: str | None
    image: str | None
    digest: str | None
    created_at: datetime
    uploaded_at: datetime | None
    ready_at: datetime | None


class VersionCreated(Version):
    upload: UploadTarget


class VersionList(BaseModel):
    items: list[Version] = Field(description="highest version first")


class BuildSummary(_Output):
    id: str
    function: str
    version: str
    status: BuildStatus
    message: str
    image: str | None
    digest: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class Build(BuildSummary):
    log: str


class BuildList(BaseModel):
    items: list[BuildSummary] = Field(description="newest first")


class UploadResult(BaseModel):
    version: Version
    build: BuildSummary | None = Field(description="the build the upload queued (null if none was queued)")


# Aliases and resolution ------------------------------------------------------------------------------------


class AliasCreate(_Input):
    name: AliasName
    version: VersionString


class AliasUpdate(_Input):
    version: VersionString


class Alias(_Output):
    function: str
    name: str
    version: str
    created_at: datetime
    updated_at: datetime


class AliasList(BaseModel):
    items: list[Alias]


class Resolution(BaseModel):
    function: str
    version: str
    via: Literal["latest", "version", "alias"]
    alias: str | None
    status: VersionStatus
    image: str | None
    digest: str | None
    config: FunctionConfig


# Instances -------------------------------------------------------------------------------------------------


class StartPath(enum.StrEnum):
    BOOTED = "booted"
    RESTORED = "restored"
    RESUMED = "resumed"
    ADOPTED = "adopted"


class InstanceCreate(_Input):
    version: Annotated[
        str, Field(max_length=64, description="a version, an alias or `latest`", examples=["latest", "1.2.3", "prod"])
    ] = "latest"


class Instance(BaseModel):
    id: str
    function: str
    version: str
    url: str = Field(description="where the instance serves invocations")
    host: str
    port: int
    start_path: StartPath = Field(description="how it came up; `adopted`: found running after a restart")
    provision_ms: float
    started_at: datetime
    last_active_at: datetime
    idle_timeout_seconds: int


class InstanceList(BaseModel):
    items: list[Instance]


class LogLine(BaseModel):
    ts: datetime
    instance: str
    invocation: str | None = Field(description="the invocation that printed it, if the runtime could tell")
    stream: str = Field(description="stdout, stderr, or alpha (the instance agent's own events)")
    line: str


class LogList(BaseModel):
    items: list[LogLine] = Field(description="oldest first")


# Invocation records ----------------------------------------------------------------------------------------


class InvocationPath(enum.StrEnum):
    WARM = "warm"
    RESUMED = "resumed"
    RESTORED = "restored"
    BOOTED = "booted"


Milliseconds = Annotated[float, Field(ge=0, le=86_400_000, allow_inf_nan=False)]
ByteCount = Annotated[int, Field(ge=0, le=2**53)]


class InvocationRecord(_Input):
    """One invocation, as the gateway reports it. `id` makes resending a batch harmless."""

    id: Annotated[str, Field(max_length=64), _matches(RECORD_ID_PATTERN, "a record id ([A-Za-z0-9._:-], 1-64)")]
    function: FunctionName
    version: Annotated[str, Field(max_length=64)] | None = None
    status: Annotated[int, Field(ge=100, le=599, description="HTTP status returned to the caller")]
    started_at: AwareDatetime
    finished_at: AwareDatetime
    queue_ms: Milliseconds = 0.0
    provision_ms: Milliseconds = 0.0
    upstream_ms: Milliseconds = 0.0
    path: InvocationPath
    instance: Annotated[str, Field(max_length=128), _matches(INSTANCE_PATTERN, "an instance id")] | None = None
    bytes_in: ByteCount = 0
    bytes_out: ByteCount = 0

    @model_validator(mode="after")
    def _ordered(self) -> InvocationRecord:
        if self.finished_at < self.started_at:
            raise ValueError("finished_at is before started_at")
        if self.version is not None and "\x00" in self.version:
            raise ValueError("version contains a NUL character")
        return self


class InvocationBatch(_Input):
    records: Annotated[list[InvocationRecord], Field(min_length=1, max_length=1000)]


class BatchResult(BaseModel):
    accepted: int
    duplicates: int = Field(description="records whose id was already stored (a resent batch)")
    unknown_functions: list[str] = Field(description="functions not found; their records were dropped")


class Invocation(_Output):
    id: str
    function: str
    version: str | None
    status: int
    started_at: datetime
    finished_at: datetime
    duration_ms: float
    queue_ms: float
    provision_ms: float
    upstream_ms: float
    path: InvocationPath
    instance: str | None
    bytes_in: int
    bytes_out: int
    received_at: datetime


class InvocationPage(BaseModel):
    items: list[Invocation] = Field(description="newest first")
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null on the last page")


# Runtimes --------------------------------------------------------------------------------------------------


class Runtime(_Output):
    name: str
    language: str
    language_version: str
    image: str
    handler: str


class RuntimeList(BaseModel):
    items: list[Runtime]
