"""The API gateway: a protocol-level reverse proxy with a live management API.

Generic by design (shared/DESIGN.md §5): it knows routes, services and targets, and its only
function-specific notion is a per-route provisioner hook. It imports neither Morty nor RIK.
"""
