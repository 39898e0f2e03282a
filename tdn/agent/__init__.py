"""Factory agent: attaches an OpenAI-compatible engine and streams its telemetry to TDN."""
