"""Installing TDN maps the top-level folders onto tdn.* and never creates top-level modules
named topology, dataplane, chaos or proto (other PyPI packages own those names)."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

from support import REPO


def test_top_level_folders_import_only_under_the_tdn_namespace(tmp_path: Path) -> None:
    code = (
        "import importlib.util, tdn.topology, tdn.controlplane, tdn.dataplane, tdn.chaos\n"
        "bad = [n for n in ('topology','dataplane','chaos','proto','controlplane')"
        " if importlib.util.find_spec(n) is not None]\n"
        "print(','.join(bad))\n"
    )
    # Run from an empty folder so the repository root is not on sys.path.
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == ""


def test_every_package_folder_is_listed_in_pyproject() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    mapping = {v: k for k, v in config["package-dir"].items()}
    found = set()
    for init in REPO.glob("*/**/__init__.py"):
        rel = init.parent.relative_to(REPO)
        top = rel.parts[0]
        if top not in mapping:
            continue
        found.add(".".join([mapping[top], *rel.parts[1:]]))
    assert found <= listed, f"add to [tool.setuptools] packages: {sorted(found - listed)}"
