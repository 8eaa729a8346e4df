"""RIK's resource model: the wire format shared by the controller, the riklet, the client and rikctl.

Input models (`WorkloadManifest` and the specs inside it) forbid unknown fields and coerce nothing, so a
typo or a wrong type is rejected with the field named. Output models describe what the API returns.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, model_validator

API_VERSION: Literal["rik/v1"] = "rik/v1"

#: DNS label (RFC 1123): what Kubernetes accepts for names, so names fit hostnames and labels.
NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
NAME_MAX_LENGTH = 52
"""Room is left within the 63-character DNS label for the instance suffix (`-` + 8 characters)."""

Name = Annotated[str, StringConstraints(min_length=1, max_length=NAME_MAX_LENGTH, pattern=NAME_PATTERN)]
LabelKey = Annotated[
    str,
    StringConstraints(min_length=1, max_length=63, pattern=r"^[A-Za-z0-9]([-A-Za-z0-9_./]*[A-Za-z0-9])?$"),
]
LabelValue = Annotated[str, StringConstraints(max_length=63, pattern=r"^[A-Za-z0-9._-]*$")]
LABEL_KEY_PATTERN = r"^[A-Za-z0-9]([-A-Za-z0-9_./]*[A-Za-z0-9])?$"


def labels_field() -> Any:
    """Labels, with the key rule also in the JSON Schema (`propertyNames`), where pydantic omits it."""
    return Field(
        default_factory=dict,
        max_length=64,
        json_schema_extra={"propertyNames": {"minLength": 1, "maxLength": 63, "pattern": LABEL_KEY_PATTERN}},
    )


ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
EnvName = Annotated[str, StringConstraints(min_length=1, max_length=256, pattern=ENV_NAME_PATTERN)]


def _reject_text(value: Any) -> Any:
    if isinstance(value, str | bool | bytes):
        raise ValueError(f"must be an integer, not {type(value).__name__} {value!r}")
    return value


#: Integers in input models reject strings and booleans ("2" is a wrong type, not a 2) and fractions;
#: `2.0` is accepted, as JSON Schema's `integer` accepts it.
StrictInt = Annotated[int, BeforeValidator(_reject_text)]


class Kind(StrEnum):
    POD = "Pod"
    VM = "VM"


class Phase(StrEnum):
    """Lifecycle of an instance. Pending → Creating → Running → Failed | Terminated."""

    PENDING = "Pending"
    CREATING = "Creating"
    RUNNING = "Running"
    PAUSED = "Paused"
    FAILED = "Failed"
    TERMINATED = "Terminated"


#: Phases in which an instance holds its node's resources.
ACTIVE_PHASES = frozenset({Phase.PENDING, Phase.CREATING, Phase.RUNNING, Phase.PAUSED})


class DesiredState(StrEnum):
    RUNNING = "Running"
    PAUSED = "Paused"
    """Keep the instance in memory with its CPUs stopped (drivers with the pause capability)."""
    DELETED = "Deleted"


class NodeStatus(StrEnum):
    READY = "Ready"
    NOT_READY = "NotReady"


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PortSpec(_Input):
    port: StrictInt = Field(ge=1, le=65535, description="Port the workload listens on inside its instance.")
    protocol: Literal["tcp", "udp"] = "tcp"
    name: Name | None = None
    host_port: Annotated[int, Field(ge=1, le=65535), BeforeValidator(_reject_text)] | None = Field(
        default=None,
        description="Port on the node's address; the riklet allocates one from its range when unset.",
    )


class Resources(_Input):
    cpu: StrictInt = Field(default=100, ge=1, le=1_000_000, description="CPU request in millicores.")
    memory: StrictInt = Field(default=64, ge=1, le=4_194_304, description="Memory request in MiB.")


class VMOptions(_Input):
    """How a `VM` workload boots. Everything is optional: by default the node's guest kernel and
    initramfs boot the image's root filesystem and run its entrypoint."""

    vcpus: StrictInt = Field(default=1, ge=1, le=64)
    kernel: Annotated[str, StringConstraints(min_length=1, max_length=1024)] | None = Field(
        default=None, description="Guest kernel on the node (path), instead of the node's own."
    )
    initramfs: Annotated[str, StringConstraints(min_length=1, max_length=1024)] | None = None
    kernel_args: list[Annotated[str, StringConstraints(max_length=1024)]] = Field(default_factory=list, max_length=64)
    disk_size: StrictInt | None = Field(default=None, ge=64, le=1_048_576, description="Root disk size in MiB.")
    snapshot: Name | None = Field(
        default=None, description="Start every instance by restoring this snapshot instead of booting."
    )


class WorkloadSpec(_Input):
    image: str = Field(
        min_length=1,
        max_length=512,
        pattern=r"^\S+$",
        description="OCI image reference (`registry/repo:tag`, `repo@sha256:...`) or `oci:/path/layout:tag`;"
        " for kind VM also a raw ext4 root disk, `file:///path/disk.ext4` or `.qcow2`, or an http(s) URL of one.",
    )
    command: list[Annotated[str, StringConstraints(max_length=4096)]] | None = Field(
        default=None, max_length=256, description="Replaces the image's entrypoint."
    )
    args: list[Annotated[str, StringConstraints(max_length=4096)]] | None = Field(
        default=None, max_length=256, description="Replaces the image's cmd."
    )
    env: dict[EnvName, Annotated[str, StringConstraints(max_length=32768)]] = Field(
        default_factory=dict,
        max_length=512,
        json_schema_extra={"propertyNames": {"minLength": 1, "maxLength": 256, "pattern": ENV_NAME_PATTERN}},
    )
    working_dir: Annotated[str, StringConstraints(max_length=4096, pattern=r"^/")] | None = None
    ports: list[PortSpec] = Field(default_factory=list, max_length=64)
    resources: Resources = Field(default_factory=Resources)
    replicas: StrictInt = Field(default=1, ge=0, le=1000)
    vm: VMOptions | None = Field(default=None, description="Only for kind VM.")


class ManifestMetadata(_Input):
    name: Name
    labels: dict[LabelKey, LabelValue] = labels_field()


class WorkloadManifest(_Input):
    """What a user submits (`rikctl apply -f`)."""

    api_version: Literal["rik/v1"] = Field(default=API_VERSION, alias="apiVersion")
    kind: Kind
    metadata: ManifestMetadata
    spec: WorkloadSpec

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _vm_options_only_for_vms(self) -> WorkloadManifest:
        if self.spec.vm is not None and self.kind != Kind.VM:
            raise ValueError("spec.vm is only valid for kind VM")
        return self


class ScaleRequest(_Input):
    replicas: StrictInt = Field(ge=0, le=1000)


# Output models ---------------------------------------------------------------------------------------


class _Output(BaseModel):
    model_config = ConfigDict(populate_by_name=True)


class ObjectMeta(_Output):
    name: str
    uid: str
    labels: dict[str, str] = Field(default_factory=dict)
    resource_version: int
    created_at: datetime
    updated_at: datetime


class WorkloadStatus(_Output):
    replicas: int
    running: int
    pending: int
    failed: int
    paused: int = 0


class Workload(_Output):
    api_version: str = Field(default=API_VERSION, alias="apiVersion")
    kind: Kind
    metadata: ObjectMeta
    spec: WorkloadSpec
    status: WorkloadStatus


class PortBinding(_Output):
    port: int
    protocol: str = "tcp"
    host_port: int | None = None


class Instance(_Output):
    """One running copy of a workload, placed on a node."""

    id: str
    workload: str
    kind: Kind
    spec: WorkloadSpec
    node: str | None
    phase: Phase
    desired_state: DesiredState
    reason: str = ""
    message: str = ""
    address: str | None = Field(default=None, description="Address of the instance on its node's network.")
    host_address: str | None = Field(default=None, description="Address of the node, for host ports.")
    ports: list[PortBinding] = Field(default_factory=list)
    resource_version: int
    created_at: datetime
    updated_at: datetime


class NodeCapacity(_Input):
    cpu: StrictInt = Field(ge=1, le=100_000_000, description="Millicores.")
    memory: StrictInt = Field(ge=1, le=1 << 40, description="MiB.")


class ResourceAmount(_Output):
    cpu: int = Field(ge=0, description="Millicores.")
    memory: int = Field(ge=0, description="MiB.")


class NodeRegistration(_Input):
    """Sent by a riklet when it starts, and again whenever it re-registers."""

    name: Name
    address: str = Field(min_length=1, max_length=255, description="Address other hosts reach the node at.")
    riklet_url: str = Field(min_length=1, max_length=1024, description="Base URL of the riklet's own API.")
    capacity: NodeCapacity
    labels: dict[LabelKey, LabelValue] = labels_field()
    runtimes: list[Literal["container", "vm"]] = Field(default_factory=list)
    subnet: Annotated[str, StringConstraints(pattern=r"^\d{1,3}(\.\d{1,3}){3}/\d{1,2}$")] | None = Field(
        default=None, description="Instance subnet; the controller assigns one if unset."
    )


class Node(_Output):
    name: str
    address: str
    riklet_url: str
    capacity: NodeCapacity
    allocated: ResourceAmount
    labels: dict[str, str]
    runtimes: list[str]
    subnet: str
    status: NodeStatus
    last_heartbeat: datetime
    resource_version: int
    created_at: datetime


class InstanceStatusReport(_Input):
    """Sent by the riklet that runs an instance whenever its phase changes."""

    node: Name
    phase: Phase
    reason: str = Field(default="", max_length=256)
    message: str = Field(default="", max_length=4096)
    address: str | None = None
    ports: list[PortBinding] = Field(default_factory=list)

    model_config = ConfigDict(extra="forbid", strict=False, frozen=True)


class SnapshotPhase(StrEnum):
    PENDING = "Pending"
    READY = "Ready"
    FAILED = "Failed"


class SnapshotRequest(_Input):
    name: Name


class Snapshot(_Output):
    """A VM instance's memory and disk state, stored on the node that took it."""

    name: str
    workload: str
    instance: str
    node: str
    phase: SnapshotPhase
    deleting: bool = False
    reason: str = ""
    message: str = ""
    size_bytes: int | None = None
    resource_version: int
    created_at: datetime


class SnapshotList(_Output):
    items: list[Snapshot]
    resource_version: int


class SnapshotStatusReport(_Input):
    """Sent by the riklet that holds a snapshot when it is taken, fails, or is deleted."""

    node: Name
    phase: SnapshotPhase | None = Field(default=None, description="None with deleted=true")
    deleted: bool = False
    reason: str = Field(default="", max_length=256)
    message: str = Field(default="", max_length=4096)
    size_bytes: StrictInt | None = Field(default=None, ge=0)


class Resource(StrEnum):
    WORKLOADS = "workloads"
    INSTANCES = "instances"
    NODES = "nodes"
    SNAPSHOTS = "snapshots"


class EventType(StrEnum):
    ADDED = "ADDED"
    MODIFIED = "MODIFIED"
    DELETED = "DELETED"


class WatchEvent(_Output):
    """One change, as streamed by `GET /api/v1/watch` (one JSON object per line)."""

    type: EventType
    resource: Resource
    resource_version: int
    object: dict[str, Any]


class WorkloadList(_Output):
    items: list[Workload]
    resource_version: int


class InstanceList(_Output):
    items: list[Instance]
    resource_version: int


class NodeList(_Output):
    items: list[Node]
    resource_version: int


class ErrorBody(_Output):
    error: str
    detail: Any = None
