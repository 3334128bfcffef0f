"""Docs that run: every ```python block in README.md and docs/*.md is executed."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def _blocks():
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = path.read_text()
        for m in _BLOCK.finditer(text):
            line = text[: m.start()].count("\n") + 2
            code = m.group(1)
            if "# doc: no-run" in code:
                continue
            yield pytest.param(path, line, code, id=f"{path.name}:{line}")


@pytest.mark.parametrize("path,line,code", list(_blocks()))
def test_doc_block_runs(path, line, code):
    compiled = compile("\n" * (line - 1) + code, str(path), "exec")
    exec(compiled, {"__name__": f"doc_{path.stem}_{line}"})


def test_the_docs_keep_their_runnable_examples():
    blocks = [p.values[2] for p in _blocks()]
    assert len(blocks) >= 15, "README.md and docs/*.md lost their runnable examples"
    # every example checks what it shows, so a doc that drifts from the engine fails
    assert all("assert" in code for code in blocks)
