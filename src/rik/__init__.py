"""RIK: a workload orchestrator for containers (`Pod`) and virtual machines (`VM`).

RIK knows nothing about functions; it never imports Morty.
"""

__version__ = "0.1.0"
