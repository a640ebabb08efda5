"""The documentation holds together: every relative link in the README, CONTRIBUTING.md,
``docs/`` and ``results/`` names a file or folder of the repository, and the README stays short
(the reference lives in ``docs/``, the studies in ``results/``)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README_MAX_LINES = 250

#: ``[text](target)`` and ``[text]: target``; images ``![alt](target)`` are links too
INLINE = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^\s*\[[^\]]+\]:\s*(\S+)", re.MULTILINE)
FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"`[^`\n]*`")
EXTERNAL = re.compile(r"^([a-z][a-z0-9+.-]*:|//|#)", re.IGNORECASE)  # http:, mailto:, anchors


def doc_files() -> list[Path]:
    """The Markdown files users read. ``docs/configuration.md`` counts once it is generated."""
    files = [ROOT / "README.md", ROOT / "CONTRIBUTING.md"]
    files += sorted((ROOT / "docs").glob("*.md"))
    files += sorted((ROOT / "results").rglob("*.md"))
    return [f for f in files if f.is_file()]


def relative_links(text: str) -> list[str]:
    """Relative link targets of Markdown ``text``, without their ``#anchor``; links inside code
    (fenced blocks and code spans) are examples, not links."""
    text = CODE_SPAN.sub("", FENCE.sub("", text))
    targets = INLINE.findall(text) + REFERENCE.findall(text)
    return [t.split("#", 1)[0] for t in targets if not EXTERNAL.match(t)]


def test_the_link_finder_reads_markdown() -> None:
    text = ("[a](docs/x.md#part) ![img](fig.png) [b](https://example.org) [c](#local)\n"
            "`[d](not/a/link.md)`\n```\n[e](inside/a/fence.md)\n```\n[f]: ref/target.md\n")
    assert relative_links(text) == ["docs/x.md", "fig.png", "ref/target.md"]


def test_the_documentation_exists() -> None:
    names = {f.relative_to(ROOT).as_posix() for f in doc_files()}
    for page in ("README.md", "CONTRIBUTING.md", "docs/README.md", "docs/data.md",
                 "docs/simulate.md", "docs/finetune.md", "docs/ray.md", "docs/reliability.md",
                 "docs/benchmarks.md", "results/README.md"):
        assert page in names, page


@pytest.mark.parametrize("page", doc_files(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_resolves(page: Path) -> None:
    broken = [t for t in relative_links(page.read_text(encoding="utf-8"))
              if t and not (page.parent / t).exists()]
    assert broken == [], f"{page.relative_to(ROOT)} links to missing files: {broken}"


def test_every_link_stays_inside_the_repository() -> None:
    """A link that leaves the checkout (``../shared``) works on one machine only."""
    outside = [f"{page.relative_to(ROOT)}: {t}" for page in doc_files()
               for t in relative_links(page.read_text(encoding="utf-8"))
               if t and not (page.parent / t).resolve().is_relative_to(ROOT)]
    assert outside == []


def test_the_readme_is_short() -> None:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) < README_MAX_LINES, (
        f"README.md has {len(lines)} lines; move reference to docs/ and studies to results/")
