"""Fixtures that start real etcd and Toxiproxy processes (see backing_services.py).

``etcd_server`` is one etcd for the whole session — starting etcd costs about a second, and tests
stay independent by working under their own key prefix (``key_prefix``). ``toxiproxy_server`` is
started per test because it starts in milliseconds and tests change its state.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from backing_services import EtcdMember, ToxiproxyServer, start_etcd, start_toxiproxy

from tdn.store.base import Store, open_store


@pytest.fixture(scope="session")
def etcd_member(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdMember]:
    member = start_etcd(tmp_path_factory.mktemp("etcd"))
    try:
        yield member
    finally:
        member.stop()


@pytest.fixture(scope="session")
def etcd_server(etcd_member: EtcdMember) -> str:
    """``127.0.0.1:PORT`` of a healthy single-member etcd, shared by the session."""
    return etcd_member.endpoint


@pytest.fixture
def toxiproxy_server(tmp_path: Path) -> Iterator[str]:
    """The API base URL (``http://127.0.0.1:PORT``) of a fresh Toxiproxy server."""
    server: ToxiproxyServer = start_toxiproxy(tmp_path)
    try:
        yield server.api_url
    finally:
        server.stop()


@pytest.fixture
def key_prefix() -> str:
    """A key prefix no other test uses, so tests can share one etcd."""
    return f"/test/{uuid.uuid4().hex[:12]}/"


@pytest.fixture(
    params=[
        pytest.param("embedded", id="embedded"),
        pytest.param("etcd", id="etcd", marks=pytest.mark.integration),
    ]
)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """The same Store contract on both implementations: embedded in tmp_path, and real etcd."""
    if request.param == "embedded":
        opened = await open_store(f"embedded://{tmp_path / 'store'}")
    else:
        endpoint = request.getfixturevalue("etcd_server")
        opened = await open_store(f"etcd://{endpoint}")
    try:
        yield opened
    finally:
        await opened.close()
