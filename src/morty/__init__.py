"""Morty: the Functions-as-a-Service system built on an orchestrator (RIK by default).

Sub-packages, one per component of shared/DESIGN.md §4:
  api/            Morty APIs: functions, versions, aliases, builds, instances, invocations
  orchestrators/  the `Orchestrator` interface and its RIK backend; Morty reaches RIK only through it
  builder/        runtime base images and function images, pushed to the OCI registry
  runtimes/       language runtimes (an HTTP server calling the user's handler) and their templates
  alpha/          the agent inside every instance (standard library only)
  cli/            the `morty` command
"""

__version__ = "0.1.0"
