"""What the control plane keeps in the Store, under which keys, and in what encoding.

Every replica reads the same keys, and only the keys below are the control plane's shared state:

* ``/tdn/plan/current`` — the plan record: version, status and how it was reached. The leader
  writes it after the site policies of that version (below), so a replica that sees a record
  already holds every policy it names. Versions never go back: a restarted or newly elected
  leader continues above the highest version found in any of these keys, because a reused number
  could carry different routes and a sidecar running it would never fetch them.
* ``/tdn/plan/sites/<site>`` — the compiled policy one site's sidecars run, with the plan version
  that produced it and why factories were excluded there (for ``tdn explain`` on any replica).
  Only sites whose routing changed are rewritten, so a follower pushes only what changed.
* ``/tdn/factories/admin/<factory>`` — the operator's drain or cordon (absent means active).
* ``/tdn/factories/state/<factory>/<replica>`` — the last telemetry report a replica received
  from a factory, written under that replica's lease: it vanishes when the replica dies, and the
  replica deletes it when the factory falls silent, so the store only lists live factories.
* ``/tdn/replicas/<replica>`` — where a live replica listens, under its lease (the leader's
  address is looked up here to redirect writes).

Values are small JSON documents, policies and reports in protobuf's canonical JSON mapping, so
that an operator can read them with ``etcdctl`` or by opening the embedded store.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format

from tdn.domain import AdminState, SitePolicy
from tdn.store.base import Store
from tdn.v1 import discovery_pb2, telemetry_pb2
from tdn.wire import site_policy_from_pb, site_policy_to_pb

ROOT = "/tdn/"
PLAN_PREFIX = "/tdn/plan/"
PLAN_KEY = "/tdn/plan/current"
SITE_PLAN_PREFIX = "/tdn/plan/sites/"
ADMIN_PREFIX = "/tdn/factories/admin/"
FACTORY_STATE_PREFIX = "/tdn/factories/state/"
REPLICA_PREFIX = "/tdn/replicas/"


class CorruptState(ValueError):
    """A stored value the control plane cannot read back (a bug or a hand edit)."""


def _json(key: str, value: bytes) -> dict[str, Any]:
    try:
        raw = json.loads(value)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CorruptState(f"{key}: cannot read {value[:200]!r}: {exc}") from None
    if not isinstance(raw, dict):
        raise CorruptState(f"{key}: expected a JSON object, got {value[:200]!r}")
    return raw


def _dumps(value: dict[str, Any]) -> bytes:
    # Sorted and compact: equal content gives equal bytes, which is how unchanged documents are
    # recognised and not written again.
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


# --- the plan record ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PlanRecord:
    """The last plan version handed out, and how it was reached."""

    version: int
    status: str
    solved_at: float
    objective: float = 0.0
    solve_seconds: float = 0.0
    # The replica that solved it.
    writer: str = ""
    # The operator policy revision it was solved under (0: the built-in default).
    policy_revision: int = 0


def encode_plan_record(record: PlanRecord) -> bytes:
    return _dumps({"version": record.version, "status": record.status,
                   "solved_at": record.solved_at, "objective": record.objective,
                   "solve_seconds": record.solve_seconds, "writer": record.writer,
                   "policy_revision": record.policy_revision})


def decode_plan_record(key: str, value: bytes) -> PlanRecord:
    raw = _json(key, value)
    try:
        return PlanRecord(version=int(raw["version"]), status=str(raw.get("status", "")),
                          solved_at=float(raw.get("solved_at", 0.0)),
                          objective=float(raw.get("objective", 0.0)),
                          solve_seconds=float(raw.get("solve_seconds", 0.0)),
                          writer=str(raw.get("writer", "")),
                          policy_revision=int(raw.get("policy_revision", 0)))
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptState(f"{key}: cannot read {value[:200]!r}: {exc}") from None


async def load_plan_record(store: Store) -> PlanRecord | None:
    entry = await store.get(PLAN_KEY)
    return None if entry is None else decode_plan_record(entry.key, entry.value)


async def save_plan_record(store: Store, record: PlanRecord) -> None:
    await store.put(PLAN_KEY, encode_plan_record(record))


# --- site policies --------------------------------------------------------------------------------

# (model, traffic class, factory id, reason): why a factory was not eligible at this site.
Exclusion = tuple[str, str, str, str]


@dataclass(frozen=True, slots=True)
class SiteDocument:
    """One site's policy as stored, and why factories were left out of its routes."""

    policy: SitePolicy
    exclusions: tuple[Exclusion, ...] = ()


def site_key(site: str) -> str:
    return SITE_PLAN_PREFIX + site


def encode_site_document(doc: SiteDocument) -> bytes:
    policy = json_format.MessageToDict(site_policy_to_pb(doc.policy),
                                       preserving_proto_field_name=True)
    return _dumps({"policy": policy, "exclusions": [list(e) for e in doc.exclusions]})


def decode_site_document(key: str, value: bytes) -> SiteDocument:
    """The stored document, checked as a sidecar would check it (a policy that fails its
    consistency check is corrupt state, never served)."""
    raw = _json(key, value)
    try:
        message = json_format.ParseDict(raw["policy"], discovery_pb2.SitePolicy())
        policy = site_policy_from_pb(message)
        exclusions = tuple((str(m), str(c), str(f), str(r)) for m, c, f, r in
                           raw.get("exclusions", []))
    except (json_format.ParseError, ValueError, KeyError, TypeError) as exc:
        raise CorruptState(f"{key}: unusable site policy: {exc}") from None
    expected = key.removeprefix(SITE_PLAN_PREFIX)
    if policy.site != expected:
        raise CorruptState(f"{key}: holds the policy of site {policy.site!r}")
    return SiteDocument(policy, exclusions)


# --- admin states ---------------------------------------------------------------------------------


def decode_admin_state(key: str, value: bytes) -> AdminState:
    try:
        return AdminState(_json(key, value)["state"])
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptState(f"{key}: cannot read {value[:200]!r}: {exc}") from None


async def load_admin_states(store: Store) -> dict[str, AdminState]:
    return {entry.key.removeprefix(ADMIN_PREFIX): decode_admin_state(entry.key, entry.value)
            for entry in await store.get_prefix(ADMIN_PREFIX)}


async def save_admin_state(store: Store, factory_id: str, state: AdminState) -> None:
    key = ADMIN_PREFIX + factory_id
    if state is AdminState.ACTIVE:
        # Active is the default: storing nothing keeps the prefix a list of exceptions.
        await store.delete(key)
    else:
        await store.put(key, json.dumps({"state": str(state)}).encode())


# --- factory telemetry ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FactoryRecord:
    """A telemetry report as one replica received it, for the others to apply."""

    factory_id: str
    writer: str
    received_at: float
    report: telemetry_pb2.TelemetryReport


def factory_state_key(factory_id: str, replica_id: str) -> str:
    return f"{FACTORY_STATE_PREFIX}{factory_id}/{replica_id}"


def split_factory_state_key(key: str) -> tuple[str, str]:
    """``(factory id, writer replica id)`` of a factory-state key."""
    factory_id, _, writer = key.removeprefix(FACTORY_STATE_PREFIX).rpartition("/")
    return factory_id, writer


def encode_factory_record(record: FactoryRecord) -> bytes:
    report = json_format.MessageToDict(record.report, preserving_proto_field_name=True)
    return _dumps({"writer": record.writer, "received_at": record.received_at,
                   "report": report})


def decode_factory_record(key: str, value: bytes) -> FactoryRecord:
    raw = _json(key, value)
    factory_id, writer = split_factory_state_key(key)
    try:
        report = json_format.ParseDict(raw["report"], telemetry_pb2.TelemetryReport())
        return FactoryRecord(factory_id=factory_id, writer=writer,
                             received_at=float(raw.get("received_at", 0.0)), report=report)
    except (json_format.ParseError, ValueError, KeyError, TypeError) as exc:
        raise CorruptState(f"{key}: unusable telemetry record: {exc}") from None


# --- replicas -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReplicaRecord:
    """Where a live replica can be reached."""

    replica_id: str
    grpc_target: str
    http_url: str


def encode_replica_record(record: ReplicaRecord) -> bytes:
    return _dumps({"id": record.replica_id, "grpc": record.grpc_target,
                   "http": record.http_url})


def decode_replica_record(key: str, value: bytes) -> ReplicaRecord:
    raw = _json(key, value)
    return ReplicaRecord(replica_id=str(raw.get("id", key.removeprefix(REPLICA_PREFIX))),
                         grpc_target=str(raw.get("grpc", "")), http_url=str(raw.get("http", "")))


def highest_version(versions: Iterable[int | None]) -> int:
    return max((v for v in versions if v is not None), default=0)
