"""The control plane's web UI: a live topology page, its event stream and its JSON helpers.

:mod:`~tdn.controlplane.ui.live` watches the control plane's components and turns changes into
events (:mod:`~tdn.controlplane.ui.events`), telemetry history
(:mod:`~tdn.controlplane.ui.history`) and patches pushed to browsers;
:mod:`~tdn.controlplane.ui.routes` serves the page (built from ``web/`` into ``static/``), the
Server-Sent Events stream and the explain and history endpoints.
"""
