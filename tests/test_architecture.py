"""The layout is the architecture: imports between relayd's packages run one way, without cycles.

The layers, lowest first (a module may import its own package and any lower layer, never a
higher one nor a sibling on its own layer):

    core        relayd/__init__, errors, sysexits, paths, settings, text
    accounts    msmtprc, Account, selection, secrets
    store       the queue (tables, migrations, SqlStore, the fast path)   } siblings: neither
    delivery    one SMTP/LMTP connection, classify, EHLO, auth, TLS       } imports the other
    daemon      lifecycle, runner, drain, recorder, retry, notices, attempt log, flush
    submission  relayd-sendmail's front end and msmtp's message rules (its -odi and -q run the
                daemon's delivery pieces in the submitting process; the daemon never imports it)
    cli         the `relayd` command

Every import counts, also one inside a function or under TYPE_CHECKING: a lazy import is still
a dependency. The check reads the source with `ast`, so it also covers modules that are costly or
impossible to import here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests import source_tree
from tests.source_tree import PACKAGE, module_files

CORE = frozenset(
    {"relayd", "errors", "sysexits", "paths", "settings", "settings_hot", "settings_values", "text"}
)
LAYERS = {
    "core": 0,
    "accounts": 1,
    "store": 2,
    "delivery": 2,
    # relayd.migrations, from migrations/ at the top of the repository: Alembic's env imports
    # the store's tables; nothing imports migrations
    "migrations": 2,
    "daemon": 3,
    "submission": 4,
    "cli": 5,
}
# migrations are the store's: the store runs them (by file location, not by import).
SAME_PACKAGE = {"migrations": {"migrations", "store"}}
MAX_TOP_LEVEL_FILES = 8
MAX_LINES = 400
LONG_REASON = "Why this module is long:"


def layer_of(module: str) -> str:
    """The layer a module belongs to ('core' for the top-level modules)."""
    parts = module.split(".")
    if len(parts) == 1 or parts[1] in CORE:
        return "core"
    if len(parts) == 2 and parts[1] not in LAYERS:
        return "core"  # an unknown top-level module: test_every_top_level_module_is_placed fails
    return parts[1]


def imported(module: str, path: Path) -> set[str]:
    """The relayd modules `module` imports, anywhere in its source."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            names.add(target)
            # `from relayd import paths` imports the module relayd.paths.
            names.update(f"{target}.{alias.name}" for alias in node.names)
    known = module_files()
    return {name for name in names if name in known and name != module}


def graph() -> dict[str, set[str]]:
    return {module: imported(module, path) for module, path in module_files().items()}


def upward_imports() -> list[str]:
    found = []
    for module, targets in graph().items():
        mine = layer_of(module)
        allowed_same = SAME_PACKAGE.get(mine, {mine})
        for target in sorted(targets):
            theirs = layer_of(target)
            if theirs in allowed_same or LAYERS[theirs] < LAYERS[mine]:
                continue
            if target == "relayd":
                continue  # the package root holds only __version__
            found.append(f"{module} ({mine}) imports {target} ({theirs})")
    return found


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges.get(root, ()))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_imports_run_one_way_between_packages() -> None:
    assert upward_imports() == []


def test_no_import_cycle_between_packages() -> None:
    packages: dict[str, set[str]] = {}
    for module, targets in graph().items():
        packages.setdefault(layer_of(module), set()).update(
            layer_of(t) for t in targets if layer_of(t) != layer_of(module)
        )
    assert cycles(packages) == []


def test_no_import_cycle_between_core_modules() -> None:
    core = {m: {t for t in ts if layer_of(t) == "core"} for m, ts in graph().items()}
    assert cycles({m: ts for m, ts in core.items() if layer_of(m) == "core"}) == []


def test_every_top_level_module_is_placed() -> None:
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= MAX_TOP_LEVEL_FILES, top
    assert [name for name in top if name[:-3] not in CORE | {"__init__"}] == []
    packages = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file())
    assert [name for name in packages if name not in LAYERS] == []
    # Also those installed from outside relayd/ (package-dir), which the walk above misses.
    installed = {name.split(".")[1] for name in source_tree.packages() if name != "relayd"}
    assert sorted(installed - LAYERS.keys()) == []


def test_long_modules_say_why() -> None:
    long = []
    for module, path in module_files().items():
        text = path.read_text(encoding="utf-8")
        if text.count("\n") > MAX_LINES and LONG_REASON not in (
            ast.get_docstring(ast.parse(text)) or ""
        ):
            long.append(f"{module}: {text.count(chr(10))} lines")
    assert long == []


def test_every_module_says_its_job_in_a_docstring() -> None:
    missing = [
        module
        for module, path in module_files().items()
        if not ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
    ]
    assert missing == []


# The checker itself: each rule must be able to fail.


def test_cycles_finds_a_two_package_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


@pytest.mark.parametrize(
    ("importer", "target", "upward"),
    [
        ("relayd.store.sql", "relayd.delivery.result", True),  # siblings
        ("relayd.accounts.stored", "relayd.submission.cmdline", True),
        ("relayd.daemon.runner", "relayd.submission.submit", True),
        ("relayd.paths", "relayd.accounts.account", True),
        ("relayd.submission.interactive", "relayd.daemon.drain", False),
        ("relayd.cli.status", "relayd.store.reports", False),
        ("relayd.migrations.env", "relayd.store.tables", False),
    ],
)
def test_layer_rule(importer: str, target: str, upward: bool) -> None:
    mine, theirs = layer_of(importer), layer_of(target)
    allowed = theirs in SAME_PACKAGE.get(mine, {mine}) or LAYERS[theirs] < LAYERS[mine]
    assert allowed is not upward


def test_the_graph_sees_lazy_and_type_only_imports() -> None:
    edges = graph()
    assert "relayd.daemon.flush" in edges["relayd.submission.sendmail"]  # inside a function
    assert "relayd.accounts.account" in edges["relayd.daemon.attempt_log"]  # under TYPE_CHECKING
    assert "relayd.settings_hot" in edges["relayd.store.location"]  # `from relayd import x`
