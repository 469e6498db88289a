"""Time-series ingestion: CSV or Parquet, long or wide form, validated, read in chunks.

Every reader yields *wide* frames: ``timestamp`` (naive UTC ``datetime64``), ``entity``
(string), then one float column per metric, sorted by entity then timestamp within a chunk.

Validation (each failure is a :class:`~ae_anomaly.errors.DataError` naming the file, the
column and the first bad data row, counted from 1 after the header), the same for CSV,
Parquet and the incremental sources:

- a CSV file is text in ``data.encoding`` (UTF-8 by default; a byte-order mark is
  honoured); a binary, compressed or otherwise encoded file is refused, naming what it is;
- the file has at least one data row;
- the timestamp column exists and every value is present and parses; naive timestamps
  are UTC, so a file that mixes them with offsets other than UTC (``+02:00``) is refused;
- the entity column, when there is one, has no empty cell;
- metric columns are numeric and finite (empty cells are missing values; text, true/false
  values and infinities are errors; a Parquet column must have a numeric type);
- per entity, timestamps strictly increase (a repeat is a duplicate, a step back is unsorted);
- missing values follow ``nan_policy``: ``ffill`` carries the last value forward for at most
  ``max_nan_fill`` steps and rejects longer gaps or a missing first value; ``drop`` drops
  rows with any missing metric; ``error`` rejects any missing value.
"""

from __future__ import annotations

import codecs
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from ae_anomaly.config import DataConfig
from ae_anomaly.errors import DataError, shorten

log = logging.getLogger(__name__)

SUFFIXES = (".csv", ".parquet", ".pq")
TS = "timestamp"
ENTITY = "entity"
DEFAULT_ENTITY = "default"


def list_data_files(path: str | Path) -> list[Path]:
    """The data files at ``path``: the file itself, or the CSV/Parquet files of a folder.

    Raises:
        DataError: the path does not exist or a folder holds no data file.
    """
    p = Path(path)
    if p.is_file():
        return [p]
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in SUFFIXES)
        if not files:
            raise DataError("folder holds no .csv or .parquet file", path=str(p))
        return files
    raise DataError("no such file or folder", path=str(p))


def check_in_memory_size(files: list[Path], cfg: DataConfig, what: str) -> None:
    """Refuse input that is read whole into memory when its files exceed
    ``data.max_in_memory_bytes``, before reading a byte of it.

    Raises:
        DataError: naming the (first) file and the sizes.
    """
    total = sum(f.stat().st_size for f in files)
    if total > cfg.max_in_memory_bytes:
        where = str(files[0]) if len(files) == 1 else f"{files[0].parent} ({len(files)} files)"
        raise DataError(f"{what} is {total:,} bytes, over data.max_in_memory_bytes "
                        f"({cfg.max_in_memory_bytes:,}): it is read whole into memory; use "
                        "a sample or a shorter period, or raise the limit", path=where)


# File signatures of formats that are not CSV text (and what to call them).
_MAGIC = ((b"\x1f\x8b", "gzip-compressed"), (b"PK\x03\x04", "a zip archive"),
          (b"BZh", "bzip2-compressed"), (b"\xfd7zXZ\x00", "xz-compressed"),
          (b"\x28\xb5\x2f\xfd", "zstd-compressed"), (b"PAR1", "a Parquet file"),
          (b"SQLite format 3", "an SQLite database"), (b"%PDF", "a PDF document"))
_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
         (codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_LE, "utf-16"),
         (codecs.BOM_UTF16_BE, "utf-16"))
_SNIFF_BYTES = 1 << 16
_COMPRESSED = (".gz", ".bz2", ".xz", ".zst", ".zip")


def _codec(name: str) -> str:
    return codecs.lookup(name).name


def csv_encoding(path: Path, encoding: str = "utf-8") -> str:
    """The encoding to read a CSV file with, after checking that it is text in
    ``encoding`` (``data.encoding``): a byte-order mark is honoured, anything else that is
    not such text is refused naming what it looks like.

    Raises:
        DataError: the file is binary or compressed, or text in another encoding.
    """
    where = str(path)
    if path.suffix.lower() in _COMPRESSED:  # pandas decompresses by the name: not sniffed
        return encoding
    try:
        with open(path, "rb") as fh:
            head = fh.read(_SNIFF_BYTES)
    except OSError as exc:
        raise DataError(f"cannot read the file ({exc.strerror})", path=where) from None
    hint = "set data.encoding to read it"
    for magic, what in _MAGIC:
        if head.startswith(magic):
            raise DataError(f"is {what}, not CSV text", path=where)
    declared = _codec(encoding)
    for bom, found in _BOMS:
        if head.startswith(bom):
            if found == "utf-8" and declared == "utf-8":
                return "utf-8-sig"
            if _codec(found) == declared or declared.startswith(_codec(found)):
                return encoding
            raise DataError(f"is {found.upper()} text (byte-order mark) but data.encoding is "
                            f"'{encoding}'; {hint}: data.encoding: {found}", path=where)
    if declared.startswith(("utf-16", "utf-32")):
        return encoding
    if b"\x00" in head:
        odd = head[1::2].count(0) > len(head) // 4 or head[0::2].count(0) > len(head) // 4
        if odd:
            raise DataError(f"looks like UTF-16 text without a byte-order mark; {hint}: "
                            "data.encoding: utf-16-le (or utf-16-be)", path=where)
        raise DataError("is binary (NUL bytes), not CSV text", path=where)
    try:
        codecs.getincrementaldecoder(encoding)().decode(head, final=len(head) < _SNIFF_BYTES)
    except UnicodeDecodeError as exc:
        raise DataError(_decode_message(exc, encoding), path=where) from None
    return encoding


def _decode_message(exc: UnicodeDecodeError, encoding: str) -> str:
    bad = exc.object[exc.start:exc.start + 1]
    byte = f"0x{bad[0]:02x}" if bad else "?"
    guess = ""
    if _codec(encoding) == "utf-8":
        guess = (" (looks like a single-byte encoding such as Latin-1 or Windows-1252; "
                 "set data.encoding: latin-1 or cp1252)")
    return f"is not valid {encoding} text: byte {byte} at offset {exc.start}{guess}"


def _raw_chunks(path: Path, cfg: DataConfig, chunk_rows: int) -> Iterator[pd.DataFrame]:
    """Raw chunks of a file with a ``_row`` column (1-based data row numbers); no empty
    chunk is yielded."""
    start = 1
    where = str(path)
    if path.suffix.lower() == ".csv":
        encoding = csv_encoding(path, cfg.encoding)
        try:
            reader = pd.read_csv(path, chunksize=chunk_rows, dtype=str, keep_default_na=False,
                                 encoding=encoding)
            for chunk in reader:
                if not len(chunk):
                    continue
                chunk["_row"] = np.arange(start, start + len(chunk))
                start += len(chunk)
                yield chunk
        except pd.errors.EmptyDataError:
            raise DataError("file is empty", path=where) from None
        except pd.errors.ParserError as exc:
            raise DataError(f"not a valid CSV file ({str(exc).splitlines()[0]})",
                            path=where) from None
        except UnicodeDecodeError as exc:  # beyond the part csv_encoding looked at
            raise DataError(_decode_message(exc, cfg.encoding), path=where) from None
        return
    try:
        pfile = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a broken file
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DataError(f"not a readable Parquet file ({detail})", path=where) from None
    for batch in pfile.iter_batches(batch_size=chunk_rows):
        if not batch.num_rows:
            continue
        chunk = batch.to_pandas()
        chunk["_row"] = np.arange(start, start + len(chunk))
        start += len(chunk)
        yield chunk


def _first_bad(mask: np.ndarray, rows: np.ndarray) -> int:
    return int(rows[np.argmax(mask)])


# A time of day followed by a zone: Z, +02:00, -0500, +02; group 1 is the zone.
_ZONED = re.compile(r"\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?\s*(Z|UTC|GMT|[+-]\d{2}(?::?\d{2})?)$",
                    re.IGNORECASE)
_UTC_ZONES = {"z", "utc", "gmt", "+00", "-00", "+00:00", "-00:00", "+0000", "-0000"}
NAIVE, OFFSET = "naive", "offset"


def _parse_timestamps(values: pd.Series, rows: np.ndarray, path: Path, col: str,
                      seen: set[str]) -> pd.Series:
    """Naive-UTC timestamps.

    Naive values are UTC, so naive values and values with a UTC zone (``Z``, ``+00:00``)
    agree; naive values beside values with another offset (``+02:00``) are refused, in this
    chunk or (through ``seen``, updated) earlier chunks of the file.
    """
    missing = values.isna().to_numpy()
    if not pd.api.types.is_datetime64_any_dtype(values):
        text = values.astype(str).str.strip()
        missing = missing | text.isin(["", "NaT", "nan", "None", "null"]).to_numpy()
    if missing.any():
        raise DataError("timestamp is missing", path=str(path), column=col,
                        row=_first_bad(missing, rows))
    if pd.api.types.is_datetime64_any_dtype(values):
        parsed = pd.to_datetime(values, utc=True)
    else:
        zone = text.str.extract(_ZONED, expand=False).str.lower()
        naive = zone.isna().to_numpy()
        offset = (~naive) & ~zone.isin(_UTC_ZONES).to_numpy()
        kinds = ({NAIVE} if naive.any() else set()) | ({OFFSET} if offset.any() else set())
        if {NAIVE, OFFSET} <= kinds | seen:
            odd = offset if NAIVE in seen or (naive.any() and np.argmax(naive) < np.argmax(
                offset)) else naive
            raise DataError(
                f"timestamp '{text.to_numpy()[np.argmax(odd)]}' mixes a time-zone offset "
                "with timestamps without one (those are read as UTC): give every timestamp "
                "in UTC, or every one with its offset", path=str(path), column=col,
                row=_first_bad(odd, rows))
        seen |= kinds
        parsed = pd.to_datetime(text, utc=True, errors="coerce", format="mixed")
        bad = parsed.isna().to_numpy()
        if bad.any():
            row = _first_bad(bad, rows)
            shown = text.to_numpy()[np.argmax(bad)]
            raise DataError(f"timestamp '{shown[:80]}' does not parse", path=str(path),
                            column=col, row=row)
    return parsed.dt.tz_convert(None).astype("datetime64[ns]")


def _parse_numeric(values: pd.Series, rows: np.ndarray, path: Path, col: str,
                   typed: bool = False) -> np.ndarray:
    """A metric column as float64 (NaN where missing).

    Args:
        typed: the values come from a typed file (Parquet): a column whose type is not
            numeric is refused as a whole, not parsed as text.
    """
    if pd.api.types.is_bool_dtype(values):
        raise DataError("column holds true/false values, not numbers", path=str(path),
                        column=col, row=int(rows[0]))
    if pd.api.types.is_numeric_dtype(values):
        nums = values.to_numpy(dtype=np.float64, na_value=np.nan)
        if np.isinf(nums).any():
            raise DataError("value is infinite", path=str(path), column=col,
                            row=_first_bad(np.isinf(nums), rows))
        return nums
    if typed and (pd.api.types.is_string_dtype(values) or pd.api.types.is_object_dtype(values)
                  or isinstance(values.dtype, pd.CategoricalDtype)):
        kinds = {type(v).__name__ for v in values.dropna().to_numpy()[:1000]}
        if kinds - {"int", "float", "Decimal"}:
            raise DataError(f"column type is {shorten(sorted(kinds), 3)}, not a number "
                            "(write metrics as numeric Parquet columns)", path=str(path),
                            column=col, row=int(rows[0]))
    text = values.astype(str).str.strip()
    missing = text.isin(["", "nan", "NaN", "NA", "null", "None"]).to_numpy()
    nums = pd.to_numeric(text.where(~missing, None), errors="coerce").to_numpy(dtype=np.float64)
    bad = np.isnan(nums) & ~missing
    if bad.any():
        shown = text.to_numpy()[np.argmax(bad)]
        raise DataError(f"value '{shown[:80]}' is not a number", path=str(path), column=col,
                        row=_first_bad(bad, rows))
    if np.isinf(nums).any():
        raise DataError("value is infinite", path=str(path), column=col,
                        row=_first_bad(np.isinf(nums), rows))
    return nums


@dataclass
class _EntityState:
    last_ts: np.datetime64 | None = None
    tail: pd.DataFrame | None = None  # last raw rows, for forward-filling across chunks


@dataclass
class TimeSeriesReader:
    """Reads and validates one data file (or a folder of them) chunk by chunk.

    Args:
        cfg: the ``data`` section of the configuration.
        metrics: the metric columns expected (e.g. a model's feature names); None to take
            every non-key column of the file.
    """

    cfg: DataConfig
    metrics: list[str] | None = None
    _state: dict[str, _EntityState] = field(default_factory=dict)
    _typed: bool = False  # reading a Parquet file: column types are checked
    _zones: set[str] = field(default_factory=set)  # naive / offset timestamps seen

    def iter_file(self, path: Path) -> Iterator[pd.DataFrame]:
        """Validated wide chunks of one file.

        Raises:
            DataError: the file is unreadable or invalid, or has no data rows.
        """
        self._state = {}
        self._zones = set()
        self._typed = path.suffix.lower() != ".csv"
        fmt = self.cfg.format
        if fmt == "smd":
            raise DataError("SMD folders are read with read_smd, not as a file", path=str(path))
        n_rows = [0]

        def counted() -> Iterator[pd.DataFrame]:
            for chunk in _raw_chunks(path, self.cfg, self.cfg.read_chunk_rows):
                n_rows[0] += len(chunk)
                yield chunk

        chunks: Iterator[pd.DataFrame] = counted()
        if fmt in ("auto", "long"):
            chunks = self._maybe_long(chunks, path)
        for chunk in chunks:
            out = self._validate_wide(chunk, path)
            if len(out):
                yield out
        if n_rows[0] == 0:
            raise DataError("file has a header but no data rows" if not self._typed
                            else "file has no data rows", path=str(path))

    def iter_path(self, path: str | Path) -> Iterator[tuple[Path, pd.DataFrame]]:
        """(file, chunk) pairs for a file or every data file of a folder."""
        for f in list_data_files(path):
            for chunk in self.iter_file(f):
                yield f, chunk

    # ----------------------------------------------------------------- long -> wide
    def _maybe_long(self, chunks: Iterator[pd.DataFrame], path: Path) -> Iterator[pd.DataFrame]:
        cfg = self.cfg
        carry: pd.DataFrame | None = None
        for chunk in chunks:
            is_long = cfg.metric_col in chunk.columns and cfg.value_col in chunk.columns
            if not is_long:
                if cfg.format == "long":
                    miss = cfg.metric_col if cfg.metric_col not in chunk.columns else cfg.value_col
                    raise DataError("long-form file lacks this column", path=str(path),
                                    column=miss)
                yield chunk
                continue
            if carry is not None:
                chunk = pd.concat([carry, chunk], ignore_index=True)
            # Rows of the last timestamp may continue in the next chunk: hold them back.
            last = chunk[cfg.timestamp_col].iloc[-1]
            held = (chunk[cfg.timestamp_col] == last).to_numpy()
            carry = chunk[held]
            if (~held).any():
                yield self._pivot(chunk[~held], path)
        if carry is not None and len(carry):
            yield self._pivot(carry, path)

    def _pivot(self, chunk: pd.DataFrame, path: Path) -> pd.DataFrame:
        cfg = self.cfg
        keys = [cfg.timestamp_col] + ([cfg.entity_col] if cfg.entity_col in chunk.columns else [])
        dup = chunk.duplicated(keys + [cfg.metric_col]).to_numpy()
        if dup.any():
            raise DataError("duplicate (timestamp, entity, metric) row", path=str(path),
                            column=cfg.metric_col, row=_first_bad(dup, chunk["_row"].to_numpy()))
        rows = chunk.groupby(keys, sort=False)["_row"].min()
        wide = chunk.pivot(index=keys, columns=cfg.metric_col, values=cfg.value_col)
        wide.columns = [str(c) for c in wide.columns]
        wide["_row"] = rows.reindex(wide.index).to_numpy()
        return wide.reset_index().sort_values("_row", kind="stable").reset_index(drop=True)

    # ----------------------------------------------------------------- validation
    def _validate_wide(self, chunk: pd.DataFrame, path: Path) -> pd.DataFrame:
        cfg = self.cfg
        rows = chunk["_row"].to_numpy()
        if cfg.timestamp_col not in chunk.columns:
            raise DataError("timestamp column is missing", path=str(path),
                            column=cfg.timestamp_col)
        ts = _parse_timestamps(chunk[cfg.timestamp_col], rows, path, cfg.timestamp_col,
                               self._zones)
        if cfg.entity_col in chunk.columns:
            raw_entity = chunk[cfg.entity_col]
            entity = raw_entity.astype(str).str.strip()
            empty = (raw_entity.isna() | entity.eq("")).to_numpy()
            if empty.any():
                raise DataError("entity is empty (every row needs one, or drop the column "
                                "for a single series)", path=str(path), column=cfg.entity_col,
                                row=_first_bad(empty, rows))
        else:
            entity = pd.Series(DEFAULT_ENTITY, index=chunk.index)
        keys = {cfg.timestamp_col, cfg.entity_col, "_row"}
        if self.metrics is None:
            self.metrics = [c for c in chunk.columns if c not in keys]
            if cfg.metrics is not None:
                self.metrics = list(cfg.metrics)
        if not self.metrics:
            raise DataError("no metric columns besides the timestamp and entity", path=str(path))
        missing = [m for m in self.metrics if m not in chunk.columns]
        if missing:
            more = f"; also missing: {shorten(missing[1:])}" if len(missing) > 1 else ""
            raise DataError(f"expected metric column is missing (expected {len(self.metrics)} "
                            f"metrics{more})", path=str(path), column=missing[0])
        columns = {TS: ts.to_numpy(), ENTITY: entity.to_numpy()}
        for m in self.metrics:
            columns[m] = _parse_numeric(chunk[m], rows, path, m, self._typed)
        columns["_row"] = rows
        out = pd.DataFrame(columns)  # at once: thousands of columns stay fast
        out = out.sort_values([ENTITY, "_row"], kind="stable").reset_index(drop=True)
        self._check_order(out, path)
        out = self._apply_nan_policy(out, path)
        return out.drop(columns="_row").reset_index(drop=True)

    def _check_order(self, out: pd.DataFrame, path: Path) -> None:
        ts = out[TS].to_numpy()
        ent = out[ENTITY].to_numpy()
        rows = out["_row"].to_numpy()
        same = np.zeros(len(out), dtype=bool)
        same[1:] = ent[1:] == ent[:-1]
        prev = np.empty_like(ts)
        prev[1:] = ts[:-1]
        # First row of each entity compares with the last timestamp of the previous chunk.
        for i in np.flatnonzero(~same):
            st = self._state.get(ent[i])
            if st is not None and st.last_ts is not None:
                prev[i] = st.last_ts
                same[i] = True
        dup = same & (ts == prev)
        back = same & (ts < prev)
        col = self.cfg.timestamp_col
        if dup.any() or back.any():
            first_dup = rows[dup].min() if dup.any() else np.iinfo(np.int64).max
            first_back = rows[back].min() if back.any() else np.iinfo(np.int64).max
            if first_dup <= first_back:
                raise DataError(f"duplicate timestamp for entity '{ent[rows == first_dup][0]}'",
                                path=str(path), column=col, row=int(first_dup))
            raise DataError(f"timestamps are not sorted for entity '{ent[rows == first_back][0]}'",
                            path=str(path), column=col, row=int(first_back))
        last = out.groupby(ENTITY, sort=False)[TS].max()
        for e, t in last.items():
            self._state.setdefault(e, _EntityState()).last_ts = t.to_datetime64()

    def _apply_nan_policy(self, out: pd.DataFrame, path: Path) -> pd.DataFrame:
        metrics = self.metrics or []
        values = out[metrics]
        nan = values.isna().to_numpy()
        policy = self.cfg.nan_policy
        if not nan.any() and policy != "ffill":
            return out
        if policy == "error" and nan.any():
            r, c = np.argwhere(nan)[np.argmin(out["_row"].to_numpy()[np.argwhere(nan)[:, 0]])]
            raise DataError("missing value (nan_policy is 'error')", path=str(path),
                            column=metrics[c], row=int(out["_row"].iat[r]))
        if policy == "drop":
            keep = ~nan.any(axis=1)
            if (~keep).any():
                log.info("%s: dropped %d rows with missing values", path, int((~keep).sum()))
            return out[keep]
        # ffill: forward-fill at most max_nan_fill steps per entity, across chunk boundaries.
        limit = self.cfg.max_nan_fill
        parts = []
        for ent, grp in out.groupby(ENTITY, sort=False):
            st = self._state.setdefault(ent, _EntityState())
            tail = st.tail if st.tail is not None else grp.iloc[:0]
            both = pd.concat([tail, grp], ignore_index=True)
            filled = both[metrics].ffill(limit=limit) if limit > 0 else both[metrics]
            filled = filled.iloc[len(tail):]
            st.tail = grp.iloc[-(limit + 1):] if limit > 0 else None
            left = filled.isna().to_numpy()
            if left.any():
                r, c = np.argwhere(left)[0]
                what = ("the entity's first value is missing" if len(tail) == 0 and r == 0
                        else f"more than {limit} consecutive missing values")
                raise DataError(f"{what} (nan_policy 'ffill', max_nan_fill {limit})",
                                path=str(path), column=metrics[c], row=int(grp["_row"].iat[r]))
            grp = grp.copy()
            grp[metrics] = filled.to_numpy()
            parts.append(grp)
        return pd.concat(parts, ignore_index=True) if parts else out


def read_timeseries(path: str | Path, cfg: DataConfig,
                    metrics: list[str] | None = None) -> pd.DataFrame:
    """Read and validate a whole file or folder into one wide frame (entity, timestamp order).

    Args:
        path: a CSV/Parquet file or a folder of them.
        cfg: the ``data`` section of the configuration.
        metrics: expected metric columns; None takes them from the file.

    Returns:
        A wide frame ``timestamp, entity, <metrics...>``.
    """
    check_in_memory_size(list_data_files(path), cfg, "input read whole")
    reader = TimeSeriesReader(cfg, metrics)
    frames = [chunk for _, chunk in reader.iter_path(path)]
    if not frames:  # every row dropped (nan_policy 'drop')
        raise DataError("no data rows left after dropping rows with missing values",
                        path=str(path))
    frame = pd.concat(frames, ignore_index=True)
    return frame.sort_values([ENTITY, TS], kind="stable").reset_index(drop=True)


def file_columns(path: Path, cfg: DataConfig) -> list[str]:
    """The column names of a CSV or Parquet file, read from its header or schema.

    Raises:
        DataError: the file is not readable CSV text or Parquet.
    """
    if path.suffix.lower() == ".csv":
        encoding = csv_encoding(path, cfg.encoding)
        try:
            return [str(c) for c in pd.read_csv(path, nrows=0, encoding=encoding).columns]
        except pd.errors.EmptyDataError:
            raise DataError("file is empty", path=str(path)) from None
        except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
            detail = (str(exc).strip().splitlines() or [""])[0]
            raise DataError(f"not a valid CSV file ({detail[:200]})", path=str(path)) from None
    try:
        return list(pq.ParquetFile(path).schema_arrow.names)
    except Exception as exc:  # pyarrow raises several types for a broken file
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DataError(f"not a readable Parquet file ({detail})", path=str(path)) from None


def metric_columns(frame: pd.DataFrame) -> list[str]:
    """The metric columns of a wide frame (everything but the keys and label columns)."""
    return [c for c in frame.columns if c not in (TS, ENTITY, "is_anomaly", "label")]


def split_entities(frame: pd.DataFrame) -> Iterator[tuple[str, pd.DataFrame]]:
    """(entity, rows) pairs of a wide frame, in order of first appearance."""
    for ent, grp in frame.groupby(ENTITY, sort=False):
        yield str(ent), grp


# --------------------------------------------------------------------------- SMD
SMD_ORIGIN = pd.Timestamp("2020-01-01")


def smd_machines(data_dir: str | Path) -> list[str]:
    """Machine names found in an SMD folder (``train/<machine>.txt``)."""
    d = Path(data_dir) / "train"
    if not d.is_dir():
        raise DataError("not an SMD folder (no train/ inside)", path=str(data_dir))
    return sorted(f.stem for f in d.glob("*.txt"))


def read_smd(data_dir: str | Path, machine: str,
             split: str = "train") -> tuple[pd.DataFrame, np.ndarray | None]:
    """Read one SMD machine's split as a wide frame, with point labels for ``test``.

    SMD files have no header and no timestamp: rows are minutes, so timestamps are
    ``2020-01-01`` plus the row index in minutes. Metrics are named ``dim_1`` .. ``dim_38``
    (1-based, as in ``interpretation_label``).

    Returns:
        (frame, labels) where labels is a 0/1 array for the test split, else None.
    """
    base = Path(data_dir)
    path = base / split / f"{machine}.txt"
    if not path.is_file():
        raise DataError("SMD file not found", path=str(path))
    values = np.loadtxt(path, delimiter=",", dtype=np.float64, ndmin=2)
    n, c = values.shape
    frame = pd.DataFrame(values, columns=[f"dim_{i + 1}" for i in range(c)])
    frame.insert(0, ENTITY, machine)
    frame.insert(0, TS, SMD_ORIGIN + pd.to_timedelta(np.arange(n), unit="min"))
    labels = None
    if split == "test":
        lpath = base / "test_label" / f"{machine}.txt"
        labels = np.loadtxt(lpath, dtype=np.int64).reshape(-1)
        if len(labels) != n:
            raise DataError(f"{len(labels)} labels for {n} rows", path=str(lpath))
    return frame, labels
