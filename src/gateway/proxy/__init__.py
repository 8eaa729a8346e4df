"""The data plane: an HTTP/1.1 reverse proxy on asyncio protocols (uvloop + httptools)."""
