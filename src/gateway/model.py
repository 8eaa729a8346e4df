"""The configuration resources the management API accepts and the data plane follows: routes,
services (upstream pools) and targets. One pydantic model each; the wire form is `model_dump()`."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$"
Name = Annotated[str, Field(pattern=NAME_PATTERN)]
Labels = dict[Annotated[str, Field(min_length=1, max_length=128)], Annotated[str, Field(max_length=1024)]]
HTTP_URL = r"^https?://[^\s/]+(/\S*)?$"
METHOD_PATTERN = r"^[A-Z]{1,16}$"
HOST_PATTERN = r"^(\*\.)?[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$"

__all__ = [
    "ApiKeyAuth",
    "AuthSpec",
    "HealthCheckSpec",
    "JwtAuth",
    "NoAuth",
    "PassiveHealthSpec",
    "ProvisionerSpec",
    "RateLimitSpec",
    "RouteSpec",
    "ServiceSpec",
    "TargetSpec",
    "parse_address",
]


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NoAuth(_Spec):
    type: Literal["none"] = "none"


class ApiKeyAuth(_Spec):
    """The request must carry one of `keys` in header `header`."""

    type: Literal["api_key"]
    header: str = Field("X-Api-Key", pattern=r"^[A-Za-z0-9-]{1,64}$")
    keys: list[Annotated[str, Field(min_length=8, max_length=512)]] = Field(min_length=1, max_length=100)


class JwtAuth(_Spec):
    """`Authorization: Bearer <jwt>` signed with HS256 (`secret`) or RS256 (keys from `jwks_url`)."""

    type: Literal["jwt"]
    algorithms: list[Literal["HS256", "RS256"]] = Field(["HS256"], min_length=1)
    secret: str | None = Field(None, min_length=32, max_length=4096)
    jwks_url: str | None = Field(None, pattern=HTTP_URL, max_length=2048)
    audience: str | None = Field(None, max_length=512)
    issuer: str | None = Field(None, max_length=512)
    leeway_s: float = Field(0, ge=0, le=3600)

    @model_validator(mode="after")
    def _keys_for_algorithms(self) -> JwtAuth:
        if "HS256" in self.algorithms and not self.secret:
            raise ValueError("HS256 needs a secret")
        if "RS256" in self.algorithms and not self.jwks_url:
            raise ValueError("RS256 needs a jwks_url")
        return self


AuthSpec = Annotated[NoAuth | ApiKeyAuth | JwtAuth, Field(discriminator="type")]


class RateLimitSpec(_Spec):
    """A token bucket per route: `rate_per_s` tokens a second, at most `burst` at once."""

    rate_per_s: float = Field(gt=0, le=1_000_000)
    burst: int = Field(1, ge=1, le=1_000_000)


class ProvisionerSpec(_Spec):
    """Called (POST JSON) when a request finds no ready target; requests wait up to `timeout_s`."""

    url: str = Field(pattern=HTTP_URL, max_length=2048)
    token: str | None = Field(None, max_length=4096)
    timeout_s: float = Field(30, gt=0, le=600)
    queue_size: int = Field(1000, ge=1, le=100_000)
    retry_after_s: int = Field(5, ge=1, le=3600)


class RouteSpec(_Spec):
    """Which requests go to which service, and what a request must pass on the way."""

    service: Name
    hosts: list[Annotated[str, Field(pattern=HOST_PATTERN, max_length=253)]] = Field([], max_length=100)
    path_prefix: str = Field("/", pattern=r"^/[\x21-\x7e]*$", max_length=1024)
    methods: list[Annotated[str, Field(pattern=METHOD_PATTERN)]] = Field([], max_length=32)
    priority: int = Field(0, ge=-1_000_000, le=1_000_000)
    strip_prefix: bool = False
    connect_timeout_s: float | None = Field(None, gt=0, le=3600)
    read_timeout_s: float | None = Field(None, gt=0, le=86400)
    max_body_bytes: int | None = Field(None, ge=0, le=1 << 50)
    auth: AuthSpec = NoAuth()
    rate_limit: RateLimitSpec | None = None
    max_concurrency: int | None = Field(None, ge=1, le=1_000_000)
    provisioner: ProvisionerSpec | None = None
    labels: Labels = Field({}, max_length=64)


class HealthCheckSpec(_Spec):
    """Active check: GET `path` on each target every `interval_s`; 2xx/3xx is healthy."""

    path: str = Field("/healthz", pattern=r"^/[\x21-\x7e]*$", max_length=1024)
    interval_s: float = Field(5, ge=0.05, le=3600)
    timeout_s: float = Field(2, gt=0, le=600)
    unhealthy_threshold: int = Field(2, ge=1, le=100)
    healthy_threshold: int = Field(1, ge=1, le=100)


class PassiveHealthSpec(_Spec):
    """Passive check: `max_failures` consecutive connection failures eject a target for `eject_s` (or,
    when the service has an active check, until that check passes again)."""

    max_failures: int = Field(3, ge=1, le=1000)
    eject_s: float = Field(10, gt=0, le=86400)


class ServiceSpec(_Spec):
    """An upstream pool."""

    policy: Literal["round_robin", "least_in_flight"] = "round_robin"
    health_check: HealthCheckSpec | None = None
    passive: PassiveHealthSpec = PassiveHealthSpec()
    retries: int = Field(2, ge=0, le=10)
    connect_timeout_s: float = Field(5, gt=0, le=3600)
    read_timeout_s: float = Field(60, gt=0, le=86400)
    labels: Labels = Field({}, max_length=64)


class TargetSpec(_Spec):
    """One upstream address of a service."""

    address: str = Field(pattern=r"^[A-Za-z0-9.:\[\]-]{1,253}:[0-9]{1,5}$")
    weight: int = Field(1, ge=1, le=1000)
    labels: Labels = Field({}, max_length=64)

    @field_validator("address")
    @classmethod
    def _port_in_range(cls, value: str) -> str:
        parse_address(value)
        return value


def parse_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    number = int(port)
    if not 0 < number < 65536:
        raise ValueError("port must be between 1 and 65535")
    return host.strip("[]"), number
