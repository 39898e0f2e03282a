"""TDN, the Token Delivery Network: routing control plane and sidecar data plane for LLM traffic."""

__version__ = "0.1.0"
