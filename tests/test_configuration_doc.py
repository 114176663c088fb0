"""CONFIGURATION.rst documents every relayd.toml key and every RELAYD_* environment variable.

The document's layout, which this test relies on: each table of relayd.toml is a section whose
title is the table's name in brackets (``[submit]``), the top-level keys are in the section
"Top-level keys", and every key and every variable is a definition-list term written as an
inline literal at the start of a line (``max_size``, ``RELAYD_CONFIG``), its definition
indented below it. The section "A complete example" holds a relayd.toml of the defaults, which
must parse to exactly the default settings.

Stdlib only (no docutils): a small reader of section titles and definition-list terms.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import replace

from relayd import settings, settings_values
from tests.source_tree import PACKAGE, module_files

DOCUMENT = PACKAGE.parent / "CONFIGURATION.rst"
TOP_LEVEL = "Top-level keys"  # the section of the keys outside any table
TOP_LEVEL_KEYS = ("database",)  # relayd.settings reads it outside `_KEYS`

# RELAYD_* names in relayd/ that users neither set nor see, with the reason. None so far: the
# variables relayd sets for the notify command are documented too, since that command reads them.
INTERNAL: dict[str, str] = {}

_VARIABLE = re.compile(r"""["'](RELAYD_[A-Z][A-Z0-9_]*)["']""")
_TERM = re.compile(r"``([^`]+)``\s*$")
_UNDERLINE = re.compile(r"""([=\-~^"'`#*+<>:.])\1+\s*$""")


def _lines() -> list[str]:
    return DOCUMENT.read_text(encoding="utf-8").splitlines()


def _terms_by_section() -> dict[str, set[str]]:
    """Each section title (overlined or not, any level) -> the terms defined under it."""
    lines = _lines()
    found: dict[str, set[str]] = {}
    section = ""
    for index, line in enumerate(lines):
        following = lines[index + 1] if index + 1 < len(lines) else ""
        title = line.strip() and not _UNDERLINE.match(line) and _UNDERLINE.match(following)
        if title and len(following.rstrip()) >= len(line.rstrip()):
            section = line.strip()
            continue
        term = _TERM.fullmatch(line)
        if term and following.startswith((" ", "\t")) and following.strip():
            found.setdefault(section, set()).add(term.group(1))
    return found


def _table(title: str) -> str | None:
    """The relayd.toml table a section title names (`[submit]`, also as a literal), or None."""
    title = title.removeprefix("``").removesuffix("``")
    found = re.fullmatch(r"\[([a-z0-9_]+(?:\.ACCOUNT)?)\]", title)
    return found.group(1) if found else None


def documented_keys() -> set[str]:
    """`table.key` for each term under a [table] title, the plain term under TOP_LEVEL."""
    keys: set[str] = set()
    for title, terms in _terms_by_section().items():
        table = _table(title)
        if table is not None:
            keys.update(f"{table}.{term}" for term in terms)
        elif title == TOP_LEVEL:
            keys.update(terms)
    return keys


def settings_keys() -> set[str]:
    """Every key relayd.toml may hold, as relayd.settings checks them."""
    in_tables = {f"{section}.{key}" for section, keys in settings._KEYS.items() for key in keys}
    per_account = {f"oauth2.ACCOUNT.{key}" for key in settings_values.OAUTH2_KEYS}  # [oauth2.NAME]
    per_account |= {f"limits.ACCOUNT.{key}" for key in settings._LIMIT_KEYS}  # [limits.NAME]
    return in_tables | per_account | set(TOP_LEVEL_KEYS)


def source_variables() -> dict[str, list[str]]:
    """RELAYD_* string literals in relayd's source -> the modules naming them."""
    found: dict[str, list[str]] = {}
    for module, path in module_files().items():
        for name in _VARIABLE.findall(path.read_text(encoding="utf-8")):
            found.setdefault(name, []).append(module)
    return found


def test_the_document_exists() -> None:
    assert DOCUMENT.is_file(), f"{DOCUMENT} is missing"


def test_every_settings_key_is_documented() -> None:
    missing = sorted(settings_keys() - documented_keys())
    assert not missing, (
        f"relayd.toml keys missing from {DOCUMENT.name} (a term ``key`` under the title"
        f" [section], or under {TOP_LEVEL!r}): {missing}"
    )


def test_no_documented_key_is_unknown() -> None:
    stale = sorted(documented_keys() - settings_keys())
    assert not stale, f"{DOCUMENT.name} documents keys relayd.toml does not accept: {stale}"


def test_every_table_has_its_section() -> None:
    tables = {_table(title) for title in _terms_by_section()}
    missing = sorted(f"[{table}]" for table in settings._KEYS if table not in tables)
    assert not missing, f"sections missing from {DOCUMENT.name}: {missing}"


def test_every_environment_variable_is_documented() -> None:
    variables = source_variables()
    # the scan itself works: these are read by relayd.paths, relayd.settings, the fast path
    assert {"RELAYD_CONFIG", "RELAYD_DATABASE_URL", "RELAYD_LOCK_TIMEOUT"} <= set(variables)
    terms = set().union(*_terms_by_section().values())
    missing = {
        name: modules
        for name, modules in sorted(variables.items())
        if name not in INTERNAL and name not in terms
    }
    assert not missing, (
        f"environment variables missing from {DOCUMENT.name} (a term ``NAME``), or add them to"
        f" INTERNAL with a reason: {missing}"
    )


def test_internal_variables_are_still_used() -> None:
    unused = sorted(set(INTERNAL) - set(source_variables()))
    assert not unused, f"INTERNAL names variables relayd no longer uses: {unused}"


def _complete_example() -> str:
    """The literal block of the section "A complete example", dedented."""
    lines = _lines()
    start = lines.index("A complete example")
    opening = next(i for i in range(start, len(lines)) if lines[i].endswith("::"))
    block: list[str] = []
    for line in lines[opening + 1 :]:
        if line.strip() and not line.startswith(" "):
            break
        block.append(line)
    return textwrap.dedent("\n".join(block)).strip() + "\n"


def test_the_complete_example_is_valid_and_shows_the_defaults() -> None:
    default = "sqlite:////nowhere/queue.sqlite3"
    found, mistakes = settings.check(_complete_example(), "example", default_database=default)
    assert mistakes == []
    assert replace(found, file=None, explicit=frozenset()) == settings.Settings(database=default)
