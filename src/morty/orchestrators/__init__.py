"""The `Orchestrator` interface Morty uses to run function instances, and its backends (RIK first)."""
