"""The committed stubs in tdn/v1 must be exactly what proto/tdn/v1 generates."""

from __future__ import annotations

import filecmp
import subprocess
import sys
from pathlib import Path

from support import REPO


def test_committed_stubs_match_the_proto_files(tmp_path: Path) -> None:
    env_path = f"{Path(sys.executable).parent}:/usr/bin:/bin"
    subprocess.run([str(REPO / "scripts" / "gen_proto.sh"), str(tmp_path)], check=True,
                   env={"PATH": env_path}, capture_output=True)
    generated = sorted(p.name for p in (tmp_path / "tdn" / "v1").iterdir())
    committed = sorted(p.name for p in (REPO / "tdn" / "v1").iterdir()
                       if p.name.endswith((".py", ".pyi")) and p.name != "__init__.py")
    assert generated == committed, "run `make proto`: stub files differ from the .proto files"
    _, mismatch, errors = filecmp.cmpfiles(tmp_path / "tdn" / "v1", REPO / "tdn" / "v1",
                                           generated, shallow=False)
    assert not mismatch and not errors, f"stale stubs (run `make proto`): {mismatch + errors}"


def test_every_proto_service_is_generated() -> None:
    from tdn.v1 import discovery_pb2, operator_pb2, telemetry_pb2, usage_pb2

    services = {
        name
        for mod in (discovery_pb2, operator_pb2, telemetry_pb2, usage_pb2)
        for name in mod.DESCRIPTOR.services_by_name
    }
    assert services == {"Discovery", "Operator", "Telemetry", "Usage"}
