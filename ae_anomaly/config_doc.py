"""Render the configuration reference (docs/configuration.md) from the pydantic models.

``python -m ae_anomaly.config_doc > docs/configuration.md``; a test checks the file is
current, so the reference cannot drift from the code.
"""

from __future__ import annotations

import inspect
import json
import re
import typing
from typing import Any, get_args

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from ae_anomaly.config import AppConfig

INTRO = """# Configuration reference

Generated from `ae_anomaly/config.py` by `python -m ae_anomaly.config_doc`; do not edit by
hand (a test checks it is current).

A configuration is one YAML file with the sections below; every command and flow also takes
`--set dotted.key=value` overrides (values are parsed as YAML: `3`, `0.01`, `true`,
`[32, 16]`). Unknown keys and wrong types fail with the key and the file named.
`ae-anomaly config -c FILE --set ...` prints the resolved configuration.

Paths and URLs may contain `{home}`: the state folder, `./.ae_anomaly` unless the
environment variable `AE_ANOMALY_HOME` says otherwise.

The `model` section is a tagged union: `model.name` picks the family, and each family
accepts only its own keys (listed under its name below).
"""


def _type_name(tp: Any) -> str:
    text = str(tp) if not isinstance(tp, type) else tp.__name__
    return (text.replace("typing.", "").replace("NoneType", "None")
            .replace("ae_anomaly.config.", ""))


def _default(field: Any) -> str:
    if field.default is not PydanticUndefined:
        value = field.default
    elif field.default_factory is not None:
        value = field.default_factory()
    else:
        return "required"
    if isinstance(value, BaseModel):
        return "(section)"
    return f"`{json.dumps(value)}`"


def _doc(cls: type) -> str:
    paras = inspect.cleandoc(cls.__doc__ or "").split("\n\n")
    keep = [p for p in paras if not p.lstrip().startswith(("Attributes:", "Args:"))]
    return "\n\n".join(p.replace("\n", " ") for p in keep)


def attribute_docs(cls: type) -> dict[str, str]:
    """Field descriptions from the ``Attributes:`` sections of a class and its bases."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        doc = inspect.cleandoc(klass.__doc__ or "") if "__doc__" in vars(klass) else ""
        section, current = False, None
        for line in doc.splitlines():
            if line.strip() in ("Attributes:", "Args:"):
                section = True
                continue
            if not section:
                continue
            if line and not line.startswith(" "):
                section = False
                continue
            m = re.match(r"^ {4}(\w+)(?: \(.*?\))?: ?(.*)$", line)
            if m:
                current = m.group(1)
                out[current] = m.group(2).strip()
            elif current and line.strip():
                out[current] += " " + line.strip()
    return out


def _table(cls: type[BaseModel], prefix: str) -> tuple[list[str], list[tuple[str, type]]]:
    docs = attribute_docs(cls)
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    nested: list[tuple[str, type]] = []
    for name, field in cls.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            nested.append((f"{prefix}{name}", ann))
            continue
        desc = (field.description or docs.get(name, "")).replace("|", "\\|").replace("\n", " ")
        rows.append(f"| `{prefix}{name}` | `{_type_name(ann)}` | {_default(field)} | {desc} |")
    return rows, nested


def _section(title: str, cls: type[BaseModel], prefix: str, level: int = 2) -> list[str]:
    out = [f"{'#' * level} {title}", "", _doc(cls), ""]
    rows, nested = _table(cls, prefix)
    if len(rows) > 2:
        out += rows + [""]
    for key, sub in nested:
        out += _section(f"`{key}`", sub, f"{key}.", level + 1)
    return out


def render() -> str:
    """The whole reference as Markdown."""
    lines = [INTRO]
    for name, field in AppConfig.model_fields.items():
        ann = field.annotation
        if typing.get_origin(ann) is typing.Annotated:
            ann = get_args(ann)[0]
        members = [a for a in get_args(ann) if isinstance(a, type) and issubclass(a, BaseModel)]
        if members:  # the model union
            lines += [f"## `{name}`", "", "Pick the family with `model.name`.", ""]
            for m in members:
                tag = m.model_fields["name"].default
                lines += _section(f"`model.name: {tag}`", m, f"{name}.", 3)
        else:
            lines += _section(f"`{name}`", ann, f"{name}.")
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":  # pragma: no cover
    print(render(), end="")
