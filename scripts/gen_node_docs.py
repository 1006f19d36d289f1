#!/usr/bin/env python3
"""Regenerate the parameter tables of the node pages (docs/nodes/*.md) from the code.

Each page holds its table between two marker lines::

    <!-- BEGIN GENERATED PARAMETERS -->
    ...
    <!-- END GENERATED PARAMETERS -->

and this script replaces what lies between them with the table the code declares:
``occ_audit_ros.params.markdown_table()`` for the perception node (whatever it returns: every
parameter the node can declare), and ``markdown_table(PLAYER_PARAMETERS)`` /
``markdown_table(RECORDER_PARAMETERS)`` for the bag player and recorder. Run from anywhere with the
venv's Python (the package is installed editable)::

    .venv/bin/python scripts/gen_node_docs.py           # rewrite stale pages in place (atomically)
    .venv/bin/python scripts/gen_node_docs.py --check   # exit 1 and name the stale pages; write nothing

Exit status: 0 = up to date (or rewritten), 1 = stale under ``--check``, 2 = a page or its markers
are missing (a clear message names the page).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

BEGIN = "<!-- BEGIN GENERATED PARAMETERS (scripts/gen_node_docs.py; do not edit by hand) -->"
END = "<!-- END GENERATED PARAMETERS -->"

REPO = Path(__file__).resolve().parent.parent


def _perception_table() -> str:
    from occ_audit_ros.params import markdown_table

    return markdown_table()


def _player_table() -> str:
    from occ_audit_ros.nodes.bag_player import PLAYER_PARAMETERS
    from occ_audit_ros.params import markdown_table

    return markdown_table(PLAYER_PARAMETERS)


def _recorder_table() -> str:
    from occ_audit_ros.nodes.bag_recorder import RECORDER_PARAMETERS
    from occ_audit_ros.params import markdown_table

    return markdown_table(RECORDER_PARAMETERS)


#: Page (relative to the repo root) -> function returning its generated Markdown block.
PAGES: dict[str, Callable[[], str]] = {
    "docs/nodes/perception_node.md": _perception_table,
    "docs/nodes/bag_player.md": _player_table,
    "docs/nodes/bag_recorder.md": _recorder_table,
}


class MarkerError(ValueError):
    """A page lacks the BEGIN/END marker pair, or has them more than once or out of order."""


def render(text: str, table: str, page: str = "<page>") -> str:
    """``text`` with the block between :data:`BEGIN` and :data:`END` replaced by ``table``.

    Raises:
        MarkerError: when the markers are missing, repeated or in the wrong order.
    """
    if text.count(BEGIN) != 1 or text.count(END) != 1:
        raise MarkerError(f"{page}: needs exactly one line {BEGIN!r} and one line {END!r}")
    head, rest = text.split(BEGIN, 1)
    if END not in rest:
        raise MarkerError(f"{page}: {END!r} comes before {BEGIN!r}")
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{table.rstrip()}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    """CLI: rewrite the generated parameter tables of docs/nodes/*.md, or ``--check`` them."""
    ap = argparse.ArgumentParser(prog="gen_node_docs.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if any page is stale; write nothing")
    args = ap.parse_args(argv)

    from occ_audit_ros.atomic import write_bytes_atomic

    stale = []
    for page, table_fn in PAGES.items():
        path = REPO / page
        if not path.is_file():
            print(f"error: {page} does not exist", file=sys.stderr)
            return 2
        text = path.read_text(encoding="utf-8")
        try:
            new = render(text, table_fn(), page)
        except MarkerError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        if new == text:
            continue
        stale.append(page)
        if not args.check:
            write_bytes_atomic(path, new.encode("utf-8"))
            print(f"rewrote {page}")
    if args.check and stale:
        print("stale generated parameter tables (run .venv/bin/python scripts/gen_node_docs.py): "
              + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
