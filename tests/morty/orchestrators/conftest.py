"""The RIK backend is tested against a real RIK: the end-to-end suite's cluster and image fixtures."""

from tests.rik.e2e.conftest import _bytecode_cache, cluster, e2e_image, image

__all__ = ["_bytecode_cache", "cluster", "e2e_image", "image"]
