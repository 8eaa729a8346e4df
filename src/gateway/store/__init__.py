"""The gateway's persisted configuration: routes, services and targets, and the change feed replicas follow."""
