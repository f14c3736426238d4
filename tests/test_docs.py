"""Every ```python block in README.md and docs/*.md runs, so the docs never rot.

The blocks of one file run in order in one namespace (a page builds on its earlier
blocks), in a fresh working directory. A block opts out only with the marker
``<!-- skip-test -->`` on the line just before its fence; markers are counted and
kept rare. Links between the pages must point at files that exist.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SKIP_MARKER = "<!-- skip-test -->"
MAX_SKIPS = 3
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# Pages whose blocks train models for several seconds.
SLOW_PAGES = {"callbacks.md", "training.md", "getting_started.md", "toolbox.md", "bundles.md"}


def python_blocks(text: str) -> list[tuple[int, str, bool]]:
    """``(first line number, code, skipped)`` of every ```python block of a Markdown text."""
    blocks: list[tuple[int, str, bool]] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].strip() == "```python":
            skipped = i > 0 and lines[i - 1].strip() == SKIP_MARKER
            indent = len(lines[i]) - len(lines[i].lstrip())
            start, i = i + 1, i + 1
            while i < len(lines) and lines[i].strip() != "```":
                i += 1
            code = "\n".join(line[indent:] for line in lines[start:i])
            blocks.append((start + 1, code, skipped))
        i += 1
    return blocks


def test_extractor_reads_blocks_and_markers() -> None:
    text = "intro\n```python\nx = 1\n```\n<!-- skip-test -->\n```python\nraise SystemExit\n```\n```bash\nls\n```\n"
    assert python_blocks(text) == [(3, "x = 1", False), (7, "raise SystemExit", True)]
    indented = "- item\n\n  ```python\n  if True:\n      y = 2\n  ```\n"
    assert python_blocks(indented) == [(4, "if True:\n    y = 2", False)]


def test_skip_markers_are_rare_and_attached_to_blocks() -> None:
    count = 0
    for page in PAGES:
        lines = page.read_text().splitlines()
        for i, line in enumerate(lines):
            if line.strip() == SKIP_MARKER:
                count += 1
                assert i + 1 < len(lines) and lines[i + 1].strip() == "```python", f"{page.name}:{i + 1}: stray marker"
    assert count <= MAX_SKIPS


def test_index_links_every_page() -> None:
    index = (ROOT / "docs" / "index.md").read_text()
    linked = set(re.findall(r"\]\(([\w.]+\.md)\)", index))
    assert {p.name for p in (ROOT / "docs").glob("*.md")} - {"index.md"} <= linked


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_resolve(page: Path) -> None:
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
        if "://" in target or target.startswith("mailto:"):
            continue
        assert (page.parent / target).exists(), f"{page.name} links to missing {target}"


def _page_params() -> list:
    return [pytest.param(p, id=p.name, marks=[pytest.mark.slow] if p.name in SLOW_PAGES else [])
            for p in PAGES if python_blocks(p.read_text())]


@pytest.mark.parametrize("page", _page_params())
def test_python_blocks_run(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__main__"}
    for line, code, skipped in python_blocks(page.read_text()):
        if skipped:
            continue
        try:
            exec(compile(code, f"{page.relative_to(ROOT)}:{line}", "exec"), namespace)
        except Exception as exc:  # name the block in the failure, keep the original traceback
            raise AssertionError(f"{page.relative_to(ROOT)} block at line {line} failed: {exc!r}") from exc
