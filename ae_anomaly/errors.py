"""User-facing errors: one line, naming the file, column and row where there is one."""

from __future__ import annotations


class AeAnomalyError(Exception):
    """An error the user can act on; the CLI prints it as one line, without a traceback."""


class ServiceUnavailableError(AeAnomalyError):
    """A service the run needs (a database, the MLflow tracking server) did not answer
    after the retries: an outage, not a mistake in the input (the CLI exits 3)."""

    transient = True


class ConfigError(AeAnomalyError):
    """A configuration file or override is invalid."""


class DataError(AeAnomalyError):
    """Input data is invalid.

    Args:
        message: what is wrong.
        path: the file (or folder) the data came from.
        column: the offending column, when there is one.
        row: the first offending row, 1-based as a person counts data rows (header excluded).
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        column: str | None = None,
        row: int | None = None,
    ) -> None:
        self.path = path
        self.column = column
        self.row = row
        where = []
        if path is not None:
            where.append(str(path))
        if column is not None:
            where.append(f"column '{column}'")
        if row is not None:
            where.append(f"row {row}")
        prefix = ", ".join(where)
        super().__init__(f"{prefix}: {message}" if prefix else message)


class ModelNotFoundError(AeAnomalyError):
    """A registered model or alias does not exist."""


def shorten(items: list[str] | tuple[str, ...], limit: int = 10) -> str:
    """``items`` joined with commas, cut after ``limit`` with a count of the rest.

    A message that lists columns stays one readable line even for a 5,000-column file:
    ``shorten([...5000 names...], 3)`` is ``'x0, x1, x2 and 4,997 more'``.
    """
    shown = ", ".join(str(i) for i in items[:limit])
    rest = len(items) - limit
    return f"{shown} and {rest:,} more" if rest > 0 else shown
