"""The `morty` command line: init, deploy, invoke, logs, and `morty up` for the whole platform."""
