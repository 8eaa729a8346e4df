"""The management API: FastAPI on its own port, token-protected, backed by the gateway's database."""
