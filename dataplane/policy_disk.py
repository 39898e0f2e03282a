"""The last good policy on local disk, so a sidecar restarted during a control-plane outage routes.

This is what makes the data plane statically stable: every ACKed policy is written (temp file,
fsync, rename, so a crash leaves the old file or the new one, never half of one) and read back at
start. The file holds the SitePolicy protobuf exactly as the wire carries it, so it is read with
the same conversion and checks as a policy from the control plane.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from pathlib import Path

from google.protobuf.message import DecodeError

from tdn.domain import SitePolicy
from tdn.v1 import discovery_pb2
from tdn.wire import site_policy_from_pb, site_policy_to_pb

from .live_policy import check_acceptable

log = logging.getLogger(__name__)

FILENAME = "policy.pb"


class PolicyDisk:
    """Reads and writes ``<state_dir>/policy.pb``."""

    def __init__(self, state_dir: str | Path) -> None:
        self.state_dir = Path(state_dir)
        self.path = self.state_dir / FILENAME

    def save(self, policy: SitePolicy) -> None:
        """Atomically replace the saved policy (blocking: call it off the event loop)."""
        data = site_policy_to_pb(policy).SerializeToString()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".policy-", suffix=".tmp", dir=self.state_dir)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        # The rename is durable only once the directory entry is.
        dir_fd = os.open(self.state_dir, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def load(self, site: str) -> SitePolicy | None:
        """The saved policy for ``site``, or None (no file, unreadable, or not usable here).

        A bad file is logged and ignored rather than fatal: the sidecar then waits for the
        control plane as on a first start.
        """
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("cannot read saved policy %s: %s", self.path, exc.strerror)
            return None
        msg = discovery_pb2.SitePolicy()
        try:
            msg.ParseFromString(data)
            policy = site_policy_from_pb(msg)
            check_acceptable(policy, site)
        except (DecodeError, ValueError) as exc:
            log.warning("ignoring saved policy %s: %s", self.path, exc)
            return None
        return policy
