"""alpha: the in-instance agent that starts the runtime, reports readiness and captures logs. Standard library only."""
