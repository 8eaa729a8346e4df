"""Placement: a pure function from a snapshot of nodes and instances to a plan."""

from rik.scheduler.placement import NodeView, PendingInstance, Plan, plan

__all__ = ["NodeView", "PendingInstance", "Plan", "plan"]
