"""docs/api.md's example runs as written (tiny data, one epoch, a temporary state folder)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "api.md"


def python_blocks(text: str) -> list[str]:
    """The fenced ```python blocks of a Markdown text, in order."""
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_doc_has_one_example():
    assert len(python_blocks(DOC.read_text())) == 1


# Branch-only marker: remove it once ae_anomaly.detectors (build_detector, load_detector)
# is merged.
@pytest.mark.slow  # about 30 s on 2 shared cores (MLflow logging and registration)
def test_api_doc_example_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("AE_ANOMALY_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)  # configs/demo.yaml resolves to the shipped copy
    for i, code in enumerate(python_blocks(DOC.read_text())):
        exec(compile(code, f"{DOC}:block{i + 1}", "exec"), {"__name__": "__doc_example__"})
    assert (tmp_path / "home" / "my-detector" / "config.json").is_file()
    assert not (tmp_path / ".ae_anomaly").exists()  # everything went under AE_ANOMALY_HOME
