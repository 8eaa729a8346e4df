"""The node's OCI image store: pull with skopeo, unpack once per digest with umoci."""

from __future__ import annotations

from rik.images._config import ImageConfig
from rik.images._reference import ImageReference, parse_reference
from rik.images._store import ImageStore, UnpackedImage

__all__ = ["ImageConfig", "ImageReference", "ImageStore", "UnpackedImage", "parse_reference"]
