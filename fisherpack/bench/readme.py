"""Generated sections of README.md: the text between ``<!-- NAME:start -->`` and
``<!-- NAME:end -->`` is made from committed JSON by a renderer, never typed by hand, and tests
check that it is current."""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import ConfigError
from ..fpk.fileio import atomic_write_bytes

__all__ = ["replace_section", "rewrite"]


def replace_section(readme: str, name: str, body: str) -> str:
    """``readme`` with the lines between the ``name`` markers replaced by ``body``."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    pattern = re.compile(re.escape(start) + r"\n.*?" + re.escape(end), flags=re.S)
    if not pattern.search(readme):
        raise ConfigError(f"README has no {start} ... {end} section")
    return pattern.sub(lambda _: f"{start}\n{body.rstrip()}\n{end}", readme)


def rewrite(readme: Path, updated: str, check: bool) -> int:
    """Write ``updated`` over ``readme`` (or with ``check``, only compare): 0 if the README now says
    what the JSON says, 1 if ``check`` found it stale."""
    if check:
        return 0 if readme.read_text() == updated else 1
    atomic_write_bytes(readme, updated.encode("utf-8"))
    return 0
