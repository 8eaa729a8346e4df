"""Builds runtime base images and function images (dependency and code layers) into the OCI registry."""
