"""MkDocs hooks: the overview page from the README, the configuration table from the code,
and a docstring check of every object the API reference documents (a missing docstring
fails ``mkdocs build --strict``)."""

from __future__ import annotations

import importlib
import inspect
import logging
import re
from pathlib import Path
from typing import Any

from adjustments.config import reference

log = logging.getLogger("mkdocs.hooks.adjustments")  # under "mkdocs": strict counts it
MARKER = "<!-- settings-table: generated from adjustments.config.KNOBS by docs/hooks.py -->"
REFERENCE = Path(__file__).with_name("reference.md")
README_MARKER = "<!-- readme: this page is the project's README.md, put here by docs/hooks.py -->"
README = Path(__file__).parent.parent / "README.md"


def settings_table() -> str:
    """The configuration reference's table, one row per environment variable."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    rows += [f"| `{env}` | {default} | {doc} |" for env, default, doc in reference()]
    return "\n".join(rows)


def front_page() -> str:
    """The README, its links made relative to the docs folder: the site's overview."""
    return README.read_text().replace("](docs/", "](")


def on_page_markdown(markdown: str, **_: Any) -> str:
    """The README on the overview page, the generated table on the configuration page."""
    return markdown.replace(README_MARKER, front_page()).replace(MARKER, settings_table())


def undocumented(path: str) -> list[str]:
    """The object named ``path`` (``module.Name`` or a module) and its public members defined
    in our package that have no docstring."""
    module_name, _, name = path.rpartition(".")
    try:
        target: Any = importlib.import_module(path)
    except ModuleNotFoundError:
        target = getattr(importlib.import_module(module_name), name)
    missing = [] if inspect.getdoc(target) else [path]
    members = vars(target).items() if inspect.isclass(target) else inspect.getmembers(target)
    for member, value in members:
        if member.startswith("_") or not (
            inspect.isfunction(value) or inspect.isclass(value) or isinstance(value, property)
        ):
            continue
        function = value.fget if isinstance(value, property) else value
        home = getattr(function, "__module__", "")
        if str(home).startswith("adjustments") and not inspect.getdoc(value):
            missing.append(f"{path}.{member}")
    return missing


def on_pre_build(**_: Any) -> None:
    """Warn (an error under --strict) for each documented object without a docstring."""
    for path in re.findall(r"^::: ([\w.]+)", REFERENCE.read_text(), re.M):
        for name in undocumented(path):
            log.warning("%s has no docstring: the API reference would show nothing", name)
