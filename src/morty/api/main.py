"""`morty-api`: run Morty APIs.

Settings come from `MORTY_*` environment variables (see `settings.py`), overridden by the options
below. The management token is read from `MORTY_TOKEN` (never from the command line, where other
users could see it) or from `<data-dir>/token`, created on first start.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
from pathlib import Path

import uvicorn

from morty.api.app import create_app
from morty.api.settings import DEFAULT_LISTEN, Settings
from morty.orchestrators.rik import RikOrchestrator
from rik.client import RikClient
from servicekit import logs


def main(argv: list[str] | None = None) -> None:
    env = Settings.from_env()
    parser = argparse.ArgumentParser(prog="morty-api", description="Run Morty APIs.")
    parser.add_argument("--listen", default=os.environ.get("MORTY_LISTEN", DEFAULT_LISTEN), help="host:port")
    parser.add_argument(
        "--database",
        default=env.database_url,
        help="SQLAlchemy URL: sqlite:///path or postgresql://user:pass@host/db (default: <data-dir>/morty.db)",
    )
    parser.add_argument("--data-dir", type=Path, default=env.data_dir, help="keys, token, local code store")
    parser.add_argument(
        "--public-url",
        default=os.environ.get("MORTY_PUBLIC_URL"),
        help="URL clients reach this service at (default: http://<listen>)",
    )
    parser.add_argument("--code-store", choices=["local", "s3"], default=env.code_store)
    parser.add_argument("--s3-bucket", default=env.s3_bucket)
    parser.add_argument("--s3-prefix", default=env.s3_prefix)
    parser.add_argument("--s3-endpoint", default=env.s3_endpoint)
    parser.add_argument("--registry", default=env.registry, help="OCI registry host:port; enables the builder")
    parser.add_argument(
        "--rik-url", default=env.rik_url, help="RIK controller URL; deploys versions and runs their instances"
    )
    parser.add_argument("--gateway-url", default=env.gateway_url, help="the API gateway's management API URL")
    parser.add_argument("--log-level", default=os.environ.get("MORTY_LOG_LEVEL", "INFO"))
    args = parser.parse_args(argv)

    logs.configure("morty-api", args.log_level)
    host, _, port = args.listen.rpartition(":")
    settings = dataclasses.replace(
        env,
        database_url=args.database,
        data_dir=args.data_dir,
        public_url=args.public_url or f"http://{args.listen}",
        code_store=args.code_store,
        s3_bucket=args.s3_bucket,
        s3_prefix=args.s3_prefix,
        s3_endpoint=args.s3_endpoint,
        registry=args.registry,
        rik_url=args.rik_url,
        gateway_url=args.gateway_url,
    )
    orchestrator = RikOrchestrator(RikClient(settings.rik_url)) if settings.rik_url else None
    app = create_app(settings, orchestrator=orchestrator)
    if settings.token is None:
        logging.getLogger(__name__).info(
            "management token read from the data directory", extra={"path": str(settings.data_dir / "token")}
        )
    uvicorn.run(
        app,
        host=host or "127.0.0.1",
        port=int(port),
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=3,
    )
