from pathlib import Path

from ae_anomaly.config_doc import attribute_docs, render

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_configuration_reference_is_current():
    assert DOC.read_text() == render(), (
        "docs/configuration.md is stale: run `python -m ae_anomaly.config_doc > "
        "docs/configuration.md`")


def test_every_key_has_a_description():
    text = render()
    rows = [ln for ln in text.splitlines() if ln.startswith("| `")]
    undocumented = [ln.split("|")[1].strip() for ln in rows if ln.rstrip().endswith("|  |")
                    and "model.name" not in ln]
    assert not undocumented, undocumented


def test_attribute_docs_parses_google_style():
    class C:
        """Doc.

        Attributes:
            a: first line
                continued.
            b (int): second.
        """

    assert attribute_docs(C) == {"a": "first line continued.", "b": "second."}
