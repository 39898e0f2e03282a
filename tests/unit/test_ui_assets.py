"""The web UI's built assets: shipped in the package, built from the current source, and free of
any address outside the control plane (the page must work with no internet)."""

from __future__ import annotations

import hashlib
import json
import re

from support import REPO

from tdn.controlplane.ui.routes import static_dir

WEB = REPO / "web"
SVG_NAMESPACE = "http://www.w3.org/2000/svg"


def source_hash() -> str:
    """What web/build.mjs records in BUILD-INFO.json (same files, same framing)."""
    files = [p for p in (WEB / "src").rglob("*") if p.is_file()]
    files += [WEB / "package-lock.json", WEB / "build.mjs"]
    digest = hashlib.sha256()
    for rel in sorted(p.relative_to(WEB).as_posix() for p in files):
        digest.update(rel.encode() + b"\0")
        digest.update((WEB / rel).read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()


def test_the_built_assets_come_from_the_current_source() -> None:
    info = json.loads((static_dir() / "BUILD-INFO.json").read_text())
    assert info["source_sha256"] == source_hash(), (
        "web/ changed since controlplane/ui/static was built: run `npm ci && npm run build` "
        "in web/ and commit the result")


def test_the_package_ships_the_page_script_and_styles() -> None:
    names = {p.name for p in static_dir().iterdir()}
    assert {"index.html", "app.js", "app.css"} <= names


def test_nothing_the_page_loads_comes_from_another_host() -> None:
    page = (static_dir() / "index.html").read_text()
    refs = re.findall(r'(?:src|href)="([^"]*)"', page)
    local = [r for r in refs if (r.startswith("/") and not r.startswith("//"))
             or r.startswith("data:")]
    assert refs and local == refs, refs
    for name in ("index.html", "app.js", "app.css"):
        text = (static_dir() / name).read_text()
        external = set(re.findall(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}[^\s\"'`)]*", text,
                                  re.IGNORECASE)) - {SVG_NAMESPACE}
        assert not external, f"{name} refers to {sorted(external)}"
        assert "@import" not in text


def test_front_end_dependencies_are_pinned_exactly_and_locked() -> None:
    package = json.loads((WEB / "package.json").read_text())
    lock = json.loads((WEB / "package-lock.json").read_text())
    deps = {**package.get("dependencies", {}), **package.get("devDependencies", {})}
    assert deps
    for name, version in deps.items():
        assert re.fullmatch(r"\d+\.\d+\.\d+", version), f"{name} is not pinned: {version}"
        locked = lock["packages"][f"node_modules/{name}"]
        assert locked["version"] == version and locked["integrity"].startswith("sha512-")


def test_the_page_is_not_served_from_a_stale_name() -> None:
    # Asset names carry a content hash, so a browser never mixes an old script with a new page.
    page = (static_dir() / "index.html").read_text()
    for name in ("app.js", "app.css"):
        version = re.search(rf"/static/{re.escape(name)}\?v=([0-9a-f]{{12}})", page)
        assert version is not None, name
        digest = hashlib.sha256((static_dir() / name).read_bytes()).hexdigest()[:12]
        assert version.group(1) == digest
