"""The sidecar: an OpenAI-compatible proxy that routes by pushed policy and fails over locally."""
