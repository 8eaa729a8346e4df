"""Builds runtime base images and function images (dependency and code layers) into the OCI registry.

- `base`: runtime base images from Debian packages (mmdebstrap, umoci), cached by recipe hash and pushed as
  ``morty/runtime-<runtime>:<hash>``;
- `sandbox`: one command in a throw-away runc container of a base image (how ``pip install`` runs);
- `function`: a function image = base + dependency layer + code layer, pushed as ``morty/fn-<name>:<version>``;
- `queue`: `Builder`, the API's `BuildQueue` (background builds, bounded concurrency, streamed logs, cancel).
"""
