"""Plumbing every service of the project shares (RIK, Morty and the gateway alike): the SQL database
layer. It knows nothing about any of them, so each may import it without crossing a boundary."""
