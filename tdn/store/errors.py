"""The errors every Store raises, whatever holds the data underneath.

Callers branch on these and never on a backend's own exceptions: ``StoreUnavailable`` means "go
read-only and keep serving from memory", the others mean the request itself cannot succeed.
"""

from __future__ import annotations


class StoreError(Exception):
    """Base of every error a Store raises."""


class StoreUnavailable(StoreError):
    """The backend cannot be reached or cannot answer now; retrying later may succeed.

    The control plane answers this by serving from what it already holds (read-only), never by
    crashing: state is a convenience for the routing path, not a dependency of it.
    """


class StoreClosed(StoreError):
    """The Store was closed by its owner; nothing more can be done with it."""


class InvalidEntry(StoreError, ValueError):
    """A key, prefix, value or TTL the Store refuses; the message says which and why."""


class LeaseExpired(StoreError):
    """The lease no longer exists: it expired or was revoked, and its keys are gone."""

    def __init__(self, lease_id: int) -> None:
        super().__init__(f"lease {lease_id:#x} has expired or was revoked")
        self.lease_id = lease_id


class RevisionCompacted(StoreError):
    """A watch asked to replay from a revision the Store no longer keeps history for.

    The caller should list the prefix again and watch from the listing's revision + 1.
    """

    def __init__(self, requested: int, compact_revision: int) -> None:
        super().__init__(
            f"cannot replay from revision {requested}: history before revision "
            f"{compact_revision} has been compacted; list again and watch from there"
        )
        self.requested = requested
        self.compact_revision = compact_revision


class InvalidStoreUrl(StoreError, ValueError):
    """A store URL in the configuration that names no store TDN knows how to open."""
