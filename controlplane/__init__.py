"""The control plane: telemetry ingest, solve loop, policy discovery, operator API and web UI."""
