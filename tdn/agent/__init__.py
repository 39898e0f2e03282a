"""Factory agent: attaches an OpenAI-compatible engine and streams its telemetry to TDN.

``scrape`` and ``histogram`` read an engine's /metrics page (pure); ``metrics_window`` turns
successive scrapes into the load to report; ``engine_client`` fetches /metrics and /v1/models;
``report`` builds the TelemetryReport; ``agent`` holds the stream (:class:`FactoryAgent`, run
in-process by ``tdn up`` and tests); ``settings`` and ``backoff`` say how; ``cli`` is
``tdn agent``.
"""
