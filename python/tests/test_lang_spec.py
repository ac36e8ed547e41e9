"""Every ```python block of lang-spec/*.md runs as written (each in a fresh namespace): the
spec's Python examples cannot drift from the package."""

import re
from pathlib import Path

import pytest

SPEC = Path(__file__).resolve().parents[2] / "lang-spec"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def blocks():
    for page in sorted(SPEC.glob("*.md")):
        text = page.read_text()
        for match in BLOCK.finditer(text):
            line = text[: match.start()].count("\n") + 2
            yield pytest.param(match.group(1), id=f"{page.name}:{line}")


@pytest.mark.parametrize("code", list(blocks()))
def test_spec_python_block_runs(code):
    if "import jax" in code:
        pytest.importorskip("jax")
    exec(compile(code, "<lang-spec>", "exec"), {})
