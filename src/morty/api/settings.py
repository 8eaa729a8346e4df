"""Morty APIs' settings: defaults, overridden by `MORTY_*` environment variables, overridden by the
command line (`main.py`)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from morty.storage.archives import ArchiveLimits

DEFAULT_DATA_DIR = Path("/var/lib/morty")
DEFAULT_LISTEN = "127.0.0.1:7800"
DEFAULT_BUILD_CACHE = Path("/var/cache/morty/base")


@dataclass(frozen=True)
class Settings:
    data_dir: Path = DEFAULT_DATA_DIR
    database_url: str = ""
    """Empty: `sqlite:///<data_dir>/morty.db` (so `sqlite:////var/lib/morty/morty.db` by default)."""
    public_url: str = f"http://{DEFAULT_LISTEN}"
    """The URL clients reach Morty APIs at; upload URLs of the local code store start with it."""
    token: str | None = None
    """The management API's bearer token. None: read `<data_dir>/token`, created on first start."""
    secret_key: str | None = None
    """Base64url of 32 bytes. None: read `<data_dir>/secret.key`, created (0600) on first start."""
    code_store: str = "local"
    s3_bucket: str | None = None
    s3_prefix: str = ""
    s3_endpoint: str | None = None
    s3_region: str | None = None
    upload_url_ttl: float = 900.0
    archive_limits: ArchiveLimits = field(default_factory=ArchiveLimits)
    registry: str = ""
    """The OCI registry (``host:port``, plain HTTP) function images are pushed to. Empty: no builder is attached
    and builds stay queued."""
    build_cache_dir: Path = DEFAULT_BUILD_CACHE
    """Where runtime base images are cached (built once per recipe)."""
    build_concurrency: int = 2
    rik_url: str = ""
    """The RIK controller's URL. Empty: no orchestrator is attached, built versions are `ready` at once and
    no instance can be asked for."""
    deploy_timeout: float = 600.0
    provision_timeout: float = 120.0
    snapshots: bool = True
    """VM versions are snapshotted once booted at deploy time, and instances restore that snapshot."""
    scaling_tick: float = 1.0
    reconcile_interval: float = 2.0
    """How often instance records are matched with the orchestrator (adopted, gone, moved to another node)."""
    gateway_url: str = ""
    """The API gateway's management API. Empty: no gateway; functions are reached through their instances."""
    gateway_token: str | None = None
    gateway_provision_url: str = ""
    """Morty's `POST /v1/provision` as the gateway reaches it (default: `<public_url>/v1/provision`)."""
    vm_unavailable: str = ""
    """Empty: VMs can run. Otherwise why they cannot (e.g. `morty up --no-vm`): new functions default to container
    isolation and asking for `vm` is refused with this reason."""

    @property
    def database(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'morty.db'}"

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if env is None else env)
        limits = ArchiveLimits(
            max_archive_bytes=int(env.get("MORTY_MAX_UPLOAD_BYTES", ArchiveLimits.max_archive_bytes)),
            max_files=int(env.get("MORTY_MAX_ARCHIVE_FILES", ArchiveLimits.max_files)),
            max_expanded_bytes=int(env.get("MORTY_MAX_EXPANDED_BYTES", ArchiveLimits.max_expanded_bytes)),
        )
        return cls(
            data_dir=Path(env.get("MORTY_DATA_DIR", str(DEFAULT_DATA_DIR))),
            database_url=env.get("MORTY_DATABASE_URL", ""),
            public_url=env.get("MORTY_PUBLIC_URL", f"http://{env.get('MORTY_LISTEN', DEFAULT_LISTEN)}"),
            token=env.get("MORTY_TOKEN") or None,
            secret_key=env.get("MORTY_SECRET_KEY") or None,
            code_store=env.get("MORTY_CODE_STORE", "local"),
            s3_bucket=env.get("MORTY_S3_BUCKET") or None,
            s3_prefix=env.get("MORTY_S3_PREFIX", ""),
            s3_endpoint=env.get("MORTY_S3_ENDPOINT") or None,
            s3_region=env.get("MORTY_S3_REGION") or None,
            upload_url_ttl=float(env.get("MORTY_UPLOAD_URL_TTL", "900")),
            archive_limits=limits,
            registry=env.get("MORTY_REGISTRY", ""),
            build_cache_dir=Path(env.get("MORTY_BUILD_CACHE", str(DEFAULT_BUILD_CACHE))),
            build_concurrency=int(env.get("MORTY_BUILD_CONCURRENCY", "2")),
            rik_url=env.get("MORTY_RIK_URL", ""),
            deploy_timeout=float(env.get("MORTY_DEPLOY_TIMEOUT", "600")),
            provision_timeout=float(env.get("MORTY_PROVISION_TIMEOUT", "120")),
            snapshots=env.get("MORTY_SNAPSHOTS", "1") not in ("0", "false", "no", "off"),
            scaling_tick=float(env.get("MORTY_SCALING_TICK", "1")),
            reconcile_interval=float(env.get("MORTY_RECONCILE_INTERVAL", "2")),
            gateway_url=env.get("MORTY_GATEWAY_URL", ""),
            gateway_token=env.get("MORTY_GATEWAY_TOKEN") or None,
            gateway_provision_url=env.get("MORTY_GATEWAY_PROVISION_URL", ""),
            vm_unavailable=env.get("MORTY_VM_UNAVAILABLE", ""),
        )
