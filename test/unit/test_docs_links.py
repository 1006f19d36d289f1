"""Every relative link in README.md and docs/**/*.md points at a file (or folder) of the repo."""

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

REPO = Path(__file__).resolve().parents[2]
PAGES = sorted([REPO / "README.md", *(REPO / "docs").rglob("*.md")])

# [text](target) and ![alt](target); the target ends at whitespace or ')'.
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_FENCE = re.compile(r"^\s*(```|~~~)")


def relative_links(text: str) -> list[str]:
    """Targets of the Markdown links in ``text`` outside code fences and inline code, minus URLs."""
    links, in_fence = [], False
    for line in text.splitlines():
        if _FENCE.match(line):
            in_fence = not in_fence
            continue
        if in_fence:
            continue
        line = re.sub(r"`[^`]*`", "", line)
        for target in _LINK.findall(line):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("#"):
                continue  # http:, mailto:, in-page anchors
            links.append(target)
    return links


def test_link_extraction_on_a_known_text():
    text = ("See [a](docs/a.md), ![img](img/x.png \"title\"), [web](https://example.org), [top](#top),\n"
            "`[not](code.md)`\n```\n[fenced](fenced.md)\n```\n[b](b.md#section)")
    assert relative_links(text) == ["docs/a.md", "img/x.png", "b.md#section"]


def test_pages_found():
    assert REPO / "README.md" in PAGES
    assert any(p.parent.name == "nodes" for p in PAGES)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(page):
    broken = []
    for target in relative_links(page.read_text(encoding="utf-8")):
        path = unquote(target.split("#", 1)[0])
        if path and not (page.parent / path).exists():
            broken.append(target)
    assert not broken, f"{page.relative_to(REPO)}: broken links {broken}"
