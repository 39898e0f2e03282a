"""What the control plane keeps in the Store, under which keys, and in what encoding.

Two things must survive a restart: the plan version counter (so a restarted control plane keeps
numbering above every version sidecars may already run; a reused number could carry different
routes and a sidecar would never fetch it, believing it already runs it) and the operator's admin
states (a drained factory must stay drained). Values are small JSON documents so that an operator
can read them with ``etcdctl`` or by opening the embedded store.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from tdn.domain import AdminState
from tdn.store.base import Store

PLAN_KEY = "/tdn/plan/current"
ADMIN_PREFIX = "/tdn/factories/admin/"


class CorruptState(ValueError):
    """A stored value the control plane cannot read back (a bug or a hand edit)."""


@dataclass(frozen=True, slots=True)
class PlanRecord:
    """The last plan version handed out, and how it was reached."""

    version: int
    status: str
    solved_at: float


async def load_plan_record(store: Store) -> PlanRecord | None:
    entry = await store.get(PLAN_KEY)
    if entry is None:
        return None
    try:
        raw = json.loads(entry.value)
        return PlanRecord(version=int(raw["version"]), status=str(raw.get("status", "")),
                          solved_at=float(raw.get("solved_at", 0.0)))
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptState(f"{PLAN_KEY}: cannot read {entry.value[:200]!r}: {exc}") from None


async def save_plan_record(store: Store, record: PlanRecord) -> None:
    value = {"version": record.version, "status": record.status, "solved_at": record.solved_at}
    await store.put(PLAN_KEY, json.dumps(value, sort_keys=True).encode())


async def load_admin_states(store: Store) -> dict[str, AdminState]:
    states: dict[str, AdminState] = {}
    for entry in await store.get_prefix(ADMIN_PREFIX):
        factory_id = entry.key.removeprefix(ADMIN_PREFIX)
        try:
            states[factory_id] = AdminState(json.loads(entry.value)["state"])
        except (ValueError, KeyError, TypeError) as exc:
            raise CorruptState(f"{entry.key}: cannot read {entry.value[:200]!r}: {exc}") from None
    return states


async def save_admin_state(store: Store, factory_id: str, state: AdminState) -> None:
    key = ADMIN_PREFIX + factory_id
    if state is AdminState.ACTIVE:
        # Active is the default: storing nothing keeps the prefix a list of exceptions.
        await store.delete(key)
    else:
        await store.put(key, json.dumps({"state": str(state)}).encode())
