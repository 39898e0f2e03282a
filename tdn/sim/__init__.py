"""Factory simulator: an OpenAI-compatible server with a token-timing model and vLLM metrics."""
