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
