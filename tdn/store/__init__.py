"""State storage behind one interface: embedded (local disk) or etcd.

Open a store with :func:`open_store` (``embedded:///path``, a bare path, or
``etcd://host:port[,host:port...]``); elect a leader on it with :func:`campaign`. The etcd backend
is imported only when an etcd URL is opened, so the embedded default never loads gRPC.
"""

from tdn.store.base import (
    Entry,
    EventKind,
    Lease,
    Listing,
    Store,
    Watch,
    WatchEvent,
    open_store,
)
from tdn.store.election import Leadership, campaign, current_leader
from tdn.store.errors import (
    InvalidEntry,
    InvalidStoreUrl,
    LeaseExpired,
    RevisionCompacted,
    StoreClosed,
    StoreError,
    StoreUnavailable,
)

__all__ = [
    "Entry",
    "EventKind",
    "InvalidEntry",
    "InvalidStoreUrl",
    "Leadership",
    "Lease",
    "LeaseExpired",
    "Listing",
    "RevisionCompacted",
    "Store",
    "StoreClosed",
    "StoreError",
    "StoreUnavailable",
    "Watch",
    "WatchEvent",
    "campaign",
    "current_leader",
    "open_store",
]
