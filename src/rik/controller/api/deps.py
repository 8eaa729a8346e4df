"""Objects the API handlers share, reached through the application state."""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Network

import httpx
from fastapi import Request

from rik.controller.database import Database
from rik.controller.leader import LeaderLoop


@dataclass
class ControllerState:
    db: Database
    leader: LeaderLoop
    instance_pool: IPv4Network
    node_prefix: int
    http: httpx.AsyncClient


def state(request: Request) -> ControllerState:
    controller: ControllerState = request.app.state.controller
    return controller
