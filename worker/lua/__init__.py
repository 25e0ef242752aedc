"""The Lua scripts our Redis writes run (each names its KEYS and ARGV in its header), and their
loader: as procrastinate keeps its SQL beside ``sql/__init__.py``."""

from __future__ import annotations

from importlib import resources

PRELUDE = "rate_common.lua"  # the one definition of the recovering rate


def load(name: str) -> str:
    """The text of the script ``name`` (e.g. ``"create.lua"``). The rate scripts get
    ``rate_common.lua`` in front, as Redis scripts cannot import one another."""
    folder = resources.files(__name__)
    text = folder.joinpath(name).read_text()
    if name.startswith("rate_") and name != PRELUDE:
        text = folder.joinpath(PRELUDE).read_text() + "\n" + text
    return text
