"""Morty APIs (FastAPI, `/v1`): functions, versions, aliases, builds, instances, invocation records."""
