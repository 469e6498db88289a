"""Integrity of registered detectors: the SHA-256 of every file, recorded at registration.

A registered version carries the tag ``ae_anomaly.sha256``: a JSON mapping of each file of
the saved detector folder (``config.json``, ``weights.pt`` or ``weights.npz``) to its
SHA-256. Loading recomputes the hashes of the files it downloaded and refuses a version
whose files differ, before reading any of them. The check guards against whoever can write
the artifact store but not the MLflow database (where the tag lives); see docs/security.md.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ae_anomaly.errors import AeAnomalyError

SHA256_TAG = "ae_anomaly.sha256"


class ModelIntegrityError(AeAnomalyError):
    """A registered model's files do not match the hashes recorded at registration."""


def file_hashes(folder: Path) -> dict[str, str]:
    """SHA-256 (hex) of every file under ``folder``, keyed by its relative path (``/``)."""
    out = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() or p.is_symlink()):
        digest = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        out[path.relative_to(folder).as_posix()] = digest.hexdigest()
    return out


def hashes_tag(folder: Path) -> str:
    """The tag value recorded at registration: the folder's :func:`file_hashes` as JSON."""
    return json.dumps(file_hashes(folder), sort_keys=True, separators=(",", ":"))


def verify_files(folder: Path, tag: str, model: str) -> None:
    """Compare the files under ``folder`` with the hashes of a registration tag.

    Args:
        folder: the downloaded detector folder.
        tag: the version's ``ae_anomaly.sha256`` tag value.
        model: ``name v<version>``, for the message.

    Raises:
        ModelIntegrityError: a file differs, is missing or was added, or the tag is not a
            mapping of file names to hashes; the message names the model and the file.
    """
    try:
        expected = json.loads(tag)
    except json.JSONDecodeError:
        expected = None
    if not isinstance(expected, dict) or not expected:
        raise ModelIntegrityError(f"model {model}: its {SHA256_TAG} tag is not a mapping of "
                                  "file names to hashes; refusing to load it")
    found = file_hashes(folder)
    for name in sorted(set(expected) | set(found)):
        if name not in found:
            problem = "is missing"
        elif name not in expected:
            problem = "was added after registration"
        elif found[name] != expected[name]:
            problem = "does not match the SHA-256 recorded at registration"
        else:
            continue
        raise ModelIntegrityError(f"model {model}: detector file {name} {problem}; refusing "
                                  "to load it (the artifact store was changed; register the "
                                  "model again)")
