"""The layers of the code, checked on its import graph: events at the bottom, then
projections, then the AT Protocol package and the leaf utilities, then the API and the
workers side by side, and the composition roots (bootstrap, cli) on top. Nothing imports
upward, and the API and the workers never import each other."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
TOP = ("services.bootstrap", "services.cli")
# module prefix -> prefixes it must not import
FORBIDDEN = {
    "events": ("projections", "services", "tests", "testkit", "bench"),
    "projections": ("services", "tests", "testkit", "bench"),
    "services.atproto": (
        "services.api",
        "services.workers",
        "services.settings",
        "services.audit",
        *TOP,
    ),
    "services.outbound": ("services.api", "services.workers", "services.atproto", *TOP),
    "services.rate_limit": ("services.api", "services.workers", "services.atproto", *TOP),
    "services.settings": ("services.api", "services.workers", *TOP),
    "services.logs": ("services.api", "services.workers", "services.atproto", *TOP),
    "services.health": ("services.api", "services.workers", "services.atproto", *TOP),
    "services.metrics": ("services.api", "services.workers", "services.atproto", *TOP),
    "services.status": ("services.api", "services.workers", "services.atproto", *TOP),
    "services.observability": ("services.api", "services.workers", "services.atproto", *TOP),
    "services.admin_client": ("services.api", "services.workers", *TOP),
    "services.api": ("services.workers", *TOP),
    "services.workers": ("services.api", *TOP),
    "services.audit": ("services.api", "services.workers", *TOP),
    # It runs the roles as commands, never their code.
    "services.supervisor": (
        "events",
        "projections",
        "services.api",
        "services.workers",
        "services.atproto",
        *TOP,
    ),
}


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def test_nothing_imports_upward():
    violations = []
    for package in ("events", "projections", "services"):
        for path in sorted((ROOT / package).rglob("*.py")):
            module = _module(path)
            rules = [f for prefix, f in FORBIDDEN.items() if _under(module, prefix)]
            for imported in _imports(path):
                for forbidden in (p for rule in rules for p in rule):
                    if _under(imported, forbidden):
                        violations.append(f"{module} imports {imported}")
    assert violations == []


def test_the_rules_cover_every_module():
    """A new module lands in a layer, or at the top on purpose."""
    loose = []
    for package in ("events", "projections", "services"):
        for path in sorted((ROOT / package).rglob("*.py")):
            module = _module(path)
            if module == "services" or any(_under(module, p) for p in (*FORBIDDEN, *TOP)):
                continue
            loose.append(module)
    assert loose == []


def test_the_package_never_imports_test_or_bench_code():
    """testkit/ is not installed: a service module that imported it would break `pip install .`"""
    found = [
        f"{_module(path)} imports {imported}"
        for package in ("events", "projections", "schemas", "services")
        for path in sorted((ROOT / package).rglob("*.py"))
        for imported in _imports(path)
        if any(_under(imported, p) for p in ("tests", "testkit", "bench"))
    ]
    assert found == []
