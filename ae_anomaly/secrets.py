"""Secrets: masking credentials in text, and ``${ENV_VAR}`` references in configuration.

One place decides what a secret looks like: the password of a URL
(``scheme://user:password@host``) and the value of a ``password=`` / ``passwd=`` /
``pwd=`` / ``secret=`` / ``token=`` query or connection-string parameter. Everything that
leaves the process as text (MLflow params and artifacts, Prefect flow-run parameters,
error lines, log lines that name a URL) goes through :func:`mask_text`.

Passwords are best kept out of URLs entirely: ``PGPASSWORD`` (or a ``~/.pgpass`` file) for
PostgreSQL, ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD`` for an MLflow
server. Where a password must be in a configured value, write ``${ENV_VAR}`` and set the
variable; :func:`interpolate_env` resolves it when the configuration is loaded.
"""

from __future__ import annotations

import os
import re
from typing import Any

from ae_anomaly.errors import ConfigError

MASK = "***"

# scheme://user:password@host  (up to the last "@" before the path: a password may hold
# an unescaped "@"; a "${VAR}" reference is not a secret and stays readable)
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s'\"]*:)"
                           r"(?P<pw>[^/\s'\"]+)(?P<tail>@)")
_PARAM_PASSWORD = re.compile(r"(?P<head>\b(?:password|passwd|pwd|secret|token|api_key)=)"
                             r"(?P<pw>[^&;\s'\"]+)", re.IGNORECASE)
_ENV_REF = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)\}")
STASH_PREFIX = "AE_ANOMALY_SECRET_"


def _replace(match: re.Match[str]) -> str:
    pw = match.group("pw")
    if _ENV_REF.fullmatch(pw) or pw == MASK:
        return match.group(0)
    return match.group("head") + MASK + (match.groupdict().get("tail") or "")


def mask_text(text: str) -> str:
    """``text`` with every URL password and ``password=`` style value replaced by ``***``.

    >>> mask_text("postgresql+psycopg://ae:s3cret@db:5432/x?sslmode=require")
    'postgresql+psycopg://ae:***@db:5432/x?sslmode=require'
    """
    return _PARAM_PASSWORD.sub(_replace, _URL_PASSWORD.sub(_replace, text))


def mask_url(url: str) -> str:
    """A URL with its password (and any ``password=`` parameter) masked."""
    return mask_text(url)


def has_secret(text: str) -> bool:
    """Whether :func:`mask_text` would change ``text``."""
    return mask_text(text) != text


def mask_values(data: Any) -> Any:
    """A copy of a JSON-like structure with every string masked."""
    if isinstance(data, str):
        return mask_text(data)
    if isinstance(data, dict):
        return {k: mask_values(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [mask_values(v) for v in data]
    return data


def interpolate_env(data: Any, where: str = "") -> Any:
    """Resolve ``${ENV_VAR}`` references in every string of a raw configuration mapping.

    Raises:
        ConfigError: a referenced variable is not set (the message names the key and the
            variable, never a value).
    """
    if isinstance(data, dict):
        return {k: interpolate_env(v, f"{where}.{k}" if where else str(k))
                for k, v in data.items()}
    if isinstance(data, list):
        return [interpolate_env(v, f"{where}[{i}]") for i, v in enumerate(data)]
    if not isinstance(data, str) or "${" not in data:
        return data

    def value(m: re.Match[str]) -> str:
        name = m.group("name")
        if name not in os.environ:
            raise ConfigError(f"key '{where}': environment variable {name} is not set")
        return os.environ[name]

    return _ENV_REF.sub(value, data)


def stash_secrets(overrides: list[str]) -> list[str]:
    """Move the secrets of ``key=value`` overrides into environment variables.

    Each password found (see :func:`mask_text`) is put in an environment variable
    ``AE_ANOMALY_SECRET_<n>`` of this process and replaced by a ``${...}`` reference, so the
    overrides can be handed to Prefect (which stores flow-run parameters in its database)
    and still resolve to the secret when the flow, in this process or a child of it, loads
    the configuration.
    """
    out = []
    for item in overrides:
        def stash(m: re.Match[str]) -> str:
            pw = m.group("pw")
            if _ENV_REF.fullmatch(pw) or pw == MASK:
                return m.group(0)
            name = next(n for i in range(len(os.environ) + 1)
                        if (n := f"{STASH_PREFIX}{i}") not in os.environ
                        or os.environ[n] == pw)
            os.environ[name] = pw
            return m.group("head") + "${" + name + "}" + (m.groupdict().get("tail") or "")

        out.append(_PARAM_PASSWORD.sub(stash, _URL_PASSWORD.sub(stash, item)))
    return out
