"""`rik-controller`: run the controller."""

from __future__ import annotations

import argparse
import os

import uvicorn

from rik.controller.app import ControllerSettings, create_app
from servicekit import logs


def main(argv: list[str] | None = None) -> None:
    defaults = ControllerSettings()
    parser = argparse.ArgumentParser(prog="rik-controller", description="Run the RIK controller.")
    parser.add_argument("--listen", default=os.environ.get("RIK_LISTEN", "127.0.0.1:7700"), help="host:port")
    parser.add_argument(
        "--database",
        default=os.environ.get("RIK_DATABASE_URL", defaults.database_url),
        help="SQLAlchemy URL: sqlite:///path or postgresql://user:pass@host/db",
    )
    parser.add_argument("--node-timeout", type=float, default=defaults.node_timeout, help="seconds")
    parser.add_argument("--lease-ttl", type=float, default=defaults.lease_ttl, help="seconds")
    parser.add_argument("--instance-cidr", default=defaults.instance_cidr)
    parser.add_argument("--node-prefix", type=int, default=defaults.node_prefix)
    parser.add_argument("--identity", default=defaults.identity)
    parser.add_argument("--log-level", default=os.environ.get("RIK_LOG_LEVEL", "INFO"))
    args = parser.parse_args(argv)

    logs.configure("rik-controller", args.log_level)
    settings = ControllerSettings(
        database_url=args.database,
        identity=args.identity,
        node_timeout=args.node_timeout,
        lease_ttl=args.lease_ttl,
        instance_cidr=args.instance_cidr,
        node_prefix=args.node_prefix,
    )
    host, _, port = args.listen.rpartition(":")
    uvicorn.run(
        create_app(settings),
        host=host or "127.0.0.1",
        port=int(port),
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=3,
    )
