"""The RIK controller: the HTTP API, the state store, and the leader's scheduling loop."""
