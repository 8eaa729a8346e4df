"""Alembic migrations of Morty's schema; run at start by `database.Database.migrate`."""
