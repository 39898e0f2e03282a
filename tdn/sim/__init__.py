"""Factory simulator: an OpenAI-compatible server with a token-timing model and vLLM metrics.

It stands in for a vLLM engine wherever TDN needs a token factory without GPUs: ``tdn up``,
end-to-end and failover tests, chaos drills and benchmarks. Modules, from the pure core out:

- :mod:`tdn.sim.textgen`: token counting (about 4 characters per token) and deterministic words
  and embedding vectors seeded by the prompt.
- :mod:`tdn.sim.scheduler`: FIFO admission into a batch bounded by concurrency and KV tokens.
- :mod:`tdn.sim.timing`: TTFT / inter-token-latency model, and a virtual-time run of it.
- :mod:`tdn.sim.faults`: fault modes, their parsing, and the seeded per-request draw.
- :mod:`tdn.sim.metrics`: vLLM-named Prometheus metrics in a per-simulator registry.
- :mod:`tdn.sim.protocol`: OpenAI request parsing, error bodies, response bodies, SSE chunks.
- :mod:`tdn.sim.settings`: one frozen value describing a simulator.
- :mod:`tdn.sim.engine`: engine state and the life of one request.
- :mod:`tdn.sim.server`: the aiohttp app (``build_app``) and ``run_simulator`` for in-process use.
- :mod:`tdn.sim.cli`: ``tdn factory-sim``.

Nothing is imported here, so importing a pure module does not load aiohttp.
"""
