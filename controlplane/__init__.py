"""PrecisionOps control plane: the service (REST API, database, rollout, auth) over the runtime library."""
