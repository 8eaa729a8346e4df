"""riklet: the node agent. Registers its node, heartbeats, and runs the instances assigned to it."""
