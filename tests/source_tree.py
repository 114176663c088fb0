"""relayd's modules as source files, by dotted name, including the migrations kept at the top.

The installed package `relayd.migrations` comes from the repository's migrations/ directory
(pyproject.toml's package-dir), so walking relayd/ alone would miss it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import relayd

PACKAGE = Path(relayd.__file__).parent
# Packages installed from a directory outside relayd/ (the keys of pyproject's package-dir).
MAPPED = ("relayd.migrations",)


def package_dir(name: str) -> Path:
    """The directory the installed package `name` is imported from."""
    spec = importlib.util.find_spec(name)
    # A namespace package here is a leftover relayd/migrations/ holding only bytecode.
    assert spec is not None and spec.origin is not None, (
        f"{name} is not installed as a regular package: run `make setup` again"
    )
    return Path(spec.origin).parent


def module_files() -> dict[str, Path]:
    """Every module of the installed relayd package, by dotted name."""
    found = {}
    for package, root in [("relayd", PACKAGE), *((name, package_dir(name)) for name in MAPPED)]:
        for path in sorted(root.rglob("*.py")):
            parts = (*package.split("."), *path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def packages() -> list[str]:
    """relayd's packages (the modules that are an `__init__.py`), sorted."""
    return sorted(name for name, path in module_files().items() if path.name == "__init__.py")
