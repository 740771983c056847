"""Generated blocks in a Markdown document: `lagvae report GRIDS --docs FILE` rewrites the text between
`<!-- lagvae report: NAME -->` and `<!-- end lagvae report -->` with the benchmark's table NAME, so the
tables in docs/RESULTS.md are the page's output, never copied by hand, and the prose around them stays. NAME is
'overview', a grid's name, GRID@METHOD (that grid's table paired against METHOD instead of its reference) or
GRID/runs (that grid's finished cells one by one, with their training and test times)."""

from __future__ import annotations

import re
from collections.abc import Mapping

from lagvae.config import ConfigError

START = re.compile(r"^<!-- lagvae report: (?P<name>[^ ]+) -->$", re.MULTILINE)
END = "<!-- end lagvae report -->"


def fill_blocks(text: str, blocks: Mapping[str, str], where: str = "the document") -> str:
    """`text` with each marked block's body replaced by `blocks[name]`; a name the report lacks or a block
    without its end marker is a one-line ConfigError, so a stale or mistyped marker never passes silently."""
    out: list[str] = []
    pos = 0
    for m in START.finditer(text):
        if m.start() < pos:
            raise ConfigError(f"{where}: block {m['name']!r} starts inside the previous one (no '{END}' before it)")
        name = m["name"]
        if name not in blocks:
            known = ", ".join(sorted(blocks)) or "none"
            raise ConfigError(f"{where} names report block {name!r}, which the report does not have ({known})")
        end = text.find(END, m.end())
        if end < 0:
            raise ConfigError(f"{where}: block {name!r} has no '{END}' line")
        out += [text[pos : m.end()], "\n\n", blocks[name].strip("\n"), "\n\n"]
        pos = end
    out.append(text[pos:])
    return "".join(out)
