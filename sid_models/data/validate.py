"""Contract validation for loaded tables, in plain pandas, before anything is written.

Loaders read a file with `read_table` (which already rejects missing, empty, unreadable and
undecodable files and missing columns), build the canonical frames with a `_row` column
holding each record's row in its source file, and call `validate_tables`. The first
violation raises a `DataError` naming the file, the row (1-based record number in the file,
the header not counted; in a CSV a quoted field may span lines, so a record is not a line)
and the column (as the file names it).
"""
from __future__ import annotations

import csv
import gzip
import io
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .schema import DataError, RelevanceScale, is_blank

ROW = "_row"
# Text that went through a failed decode carries U+FFFD; C0 control characters other than
# tab and newlines mean binary garbage or a wrong encoding.
UNDECODABLE = re.compile("[\ufffd\x00-\x08\x0b\x0c\x0e-\x1f]")
# C1 controls (U+0080-U+009F) are what Windows-1252 punctuation (™ ® – ’ …) becomes when its
# bytes were read as Latin-1 (28 Home Depot titles): they are repaired, not refused.
C1_CONTROL = re.compile("[\x80-\x9f]")
ID_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\ufffd]")


def repair_cp1252(text: str) -> str:
    """`text` with each C1 control read back as the Windows-1252 character of that byte, and the
    five bytes Windows-1252 leaves undefined (0x81 0x8D 0x8F 0x90 0x9D: the debris of a doubly
    mis-decoded character, as in the Home Depot title "EcoStorage 3\\x89\u00db\\x90Tier") as a space."""
    def character(match: re.Match) -> str:
        try:
            return bytes([ord(match.group())]).decode("cp1252")
        except UnicodeDecodeError:
            return " "

    return C1_CONTROL.sub(character, text)


@dataclass(frozen=True)
class Source:
    """Where a canonical table came from: its file and the file's name for each canonical column."""

    file: Path
    columns: dict[str, str] = field(default_factory=dict)

    def column(self, canonical: str) -> str:
        return self.columns.get(canonical, canonical)

    def error(self, message: str, frame: pd.DataFrame | None = None, position: int | None = None,
              column: str | None = None) -> DataError:
        row = int(frame[ROW].iloc[position]) if frame is not None and position is not None else None
        return DataError(message, file=self.file, row=row, column=self.column(column) if column else None)


def read_table(path: Path, required: tuple[str, ...], *, sep: str = ",",
               encoding: str | tuple[str, ...] = "utf-8") -> pd.DataFrame:
    """Read a parquet or (optionally gzipped) CSV/TSV file with every value as read, plus `_row`.

    CSV values are read as strings (conversion and its errors happen in the loaders); an
    empty cell is an empty string. A tuple of encodings is tried in order (the first that
    decodes the whole file wins: UTF-8 before a single-byte code page). Raises DataError for a missing, empty, unreadable or
    undecodable file and for a missing required column.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError("file not found", file=path)
    if path.stat().st_size == 0:
        raise DataError("empty file (0 bytes)", file=path)
    if path.suffix == ".parquet":
        frame = _read_parquet(path)
    else:
        frame = _read_csv(path, sep, encoding)
    if frame.empty:
        raise DataError("file holds no rows", file=path)
    for column in required:
        if column not in frame.columns:
            raise DataError(f"missing column (found: {', '.join(map(str, frame.columns))})", file=path, column=column)
    frame[ROW] = np.arange(1, len(frame) + 1)
    return frame


def _read_parquet(path: Path) -> pd.DataFrame:
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as error:
        raise DataError(f"unreadable parquet: {error}", file=path) from error
    for name, column in zip(table.column_names, table.columns):
        if pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type):
            raise DataError(f"column holds bytes, not text (type {column.type})", file=path, column=name)
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            try:
                column.validate(full=True)
            except pa.ArrowInvalid:
                raise DataError("undecodable text: not valid UTF-8", file=path,
                                row=_first_invalid_utf8(column), column=name) from None
    return table.to_pandas()


def _first_invalid_utf8(column: pa.ChunkedArray) -> int:
    for position, value in enumerate(column.cast(pa.binary()).to_pylist()):
        if value is not None:
            try:
                value.decode("utf-8")
            except UnicodeDecodeError:
                return position + 1
    raise AssertionError("arrow reported invalid UTF-8 but every value decodes")


def _read_csv(path: Path, sep: str, encoding: str | tuple[str, ...]) -> pd.DataFrame:
    raw = path.read_bytes()
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as error:
            raise DataError(f"unreadable gzip: {error}", file=path) from error
    if not raw.strip():
        raise DataError("empty file (no header)", file=path)
    encodings = (encoding,) if isinstance(encoding, str) else encoding
    for candidate in encodings:
        try:
            text = raw.decode(candidate)
            break
        except UnicodeDecodeError as error:
            failure, failed_encoding = error, candidate
    else:
        line = raw[:failure.start].count(b"\n") + 1
        raise DataError(f"undecodable text: byte 0x{raw[failure.start]:02x} at line {line} is not "
                        f"{' or '.join(encodings)}", file=path,
                        row=_record_at(raw[:failure.start].decode(failed_encoding), sep)) from None
    try:
        return pd.read_csv(io.StringIO(text), sep=sep, dtype=str, keep_default_na=False)
    except pd.errors.ParserError as error:
        row, problem = _malformed_record(text, sep)
        raise DataError(f"malformed CSV: {problem or error}", file=path, row=row) from None


def _record_at(prefix: str, sep: str) -> int | None:
    """Record number (header not counted) of the record in which the text after `prefix` sits."""
    try:
        records = sum(1 for _ in csv.reader(io.StringIO(prefix), delimiter=sep))
    except csv.Error:
        return None
    return records if prefix.endswith("\n") or not prefix else records - 1


def _malformed_record(text: str, sep: str) -> tuple[int | None, str | None]:
    """(record number, what is wrong) of the first record pandas could not parse: too many fields
    or a quote that never closes. Counted in records, not lines, so a quoted newline does not
    shift it."""
    reader = csv.reader(io.StringIO(text), delimiter=sep, strict=True)
    record = 0
    try:
        width = len(next(reader))
        for record, fields in enumerate(reader, start=1):
            if len(fields) > width:
                return record, f"{len(fields)} fields where the header has {width}"
    except csv.Error as error:
        return record + 1, f"{error} (a quote opened in this record never closes)"
    return None, None


def to_ids(frame: pd.DataFrame, column: str, source: Source) -> pd.Series:
    """An id column as strings. Integers and strings are ids; nulls, empty strings and fractions are not."""
    values = frame[column]
    if pd.api.types.is_bool_dtype(values) or not (
            pd.api.types.is_integer_dtype(values) or pd.api.types.is_float_dtype(values)
            or pd.api.types.is_string_dtype(values) or values.dtype == object):
        raise source.error(f"wrong type: ids must be integers or strings, got {values.dtype}", frame, 0, column)
    missing = values.isna().to_numpy()
    if missing.any():
        raise source.error("missing id", frame, int(np.argmax(missing)), column)
    if pd.api.types.is_float_dtype(values):
        fractional = (values != np.floor(values)).to_numpy()
        if fractional.any():
            position = int(np.argmax(fractional))
            raise source.error(f"wrong type: id {values.iloc[position]!r} is not an integer", frame, position, column)
        values = values.astype(np.int64)
    elif values.dtype == object:
        bad = ~values.map(lambda value: isinstance(value, (str, int, np.integer))).to_numpy()
        if bad.any():
            position = int(np.argmax(bad))
            raise source.error(f"wrong type: id {values.iloc[position]!r} ({type(values.iloc[position]).__name__})",
                               frame, position, column)
    ids = values.astype(str).str.strip()
    empty = ids.eq("").to_numpy()
    if empty.any():
        raise source.error("empty id", frame, int(np.argmax(empty)), column)
    control = ids.str.contains(ID_CONTROL).to_numpy()
    if control.any():
        position = int(np.argmax(control))
        raise source.error(f"id {ids.iloc[position][:60]!r} holds a control character", frame, position, column)
    return ids


def to_text(frame: pd.DataFrame, column: str, source: Source, *, required: bool) -> pd.Series:
    """A text column as str; `required` text may be neither null nor blank."""
    values = frame[column]
    if not (pd.api.types.is_string_dtype(values) or values.dtype == object) or pd.api.types.is_bool_dtype(values):
        raise source.error(f"wrong type: text must be strings, got {values.dtype}", frame, 0, column)
    not_string = ~values.map(lambda value: isinstance(value, str) or value is None or value is pd.NA
                             or (isinstance(value, float) and np.isnan(value))).to_numpy()
    if not_string.any():
        position = int(np.argmax(not_string))
        raise source.error(f"wrong type: {values.iloc[position]!r} is not a string", frame, position, column)
    text = values.fillna("").astype(str)
    if required:
        blank = (values.isna() | text.map(is_blank)).to_numpy()
        if blank.any():
            raise source.error(f"empty {column}", frame, int(np.argmax(blank)), column)
    undecodable = text.str.contains(UNDECODABLE).to_numpy()
    if undecodable.any():
        position = int(np.argmax(undecodable))
        raise source.error(f"undecodable text {text.iloc[position][:60]!r} (replacement or control character)",
                           frame, position, column)
    with_c1 = text.str.contains(C1_CONTROL).to_numpy()
    if with_c1.any():
        text = text.copy()
        text[with_c1] = text[with_c1].map(repair_cp1252)
    return text


def to_numbers(frame: pd.DataFrame, column: str, source: Source) -> pd.Series:
    """A numeric column as float64; a value that is not a finite number is an error."""
    values = frame[column]
    if pd.api.types.is_bool_dtype(values):
        raise source.error("wrong type: expected numbers, got booleans", frame, 0, column)
    if source.file.suffix == ".parquet" and not pd.api.types.is_numeric_dtype(values):
        # CSV cells are text by nature; a typed file that stores numbers as strings is a broken export
        raise DataError(f"wrong type: expected a numeric column, got {values.dtype} (first value "
                        f"{values.iloc[0]!r})", file=source.file, column=source.column(column))
    numbers = pd.to_numeric(values, errors="coerce").astype(np.float64)
    bad = ~np.isfinite(numbers.to_numpy())
    if bad.any():
        position = int(np.argmax(bad))
        value = values.iloc[position]
        value = value.item() if isinstance(value, np.generic) else value   # 'inf', not 'np.float64(inf)'
        raise source.error(f"wrong type: {value!r} is not a number", frame, position, column)
    return numbers


def validate_tables(items: pd.DataFrame, queries: pd.DataFrame, judgments: pd.DataFrame,
                    sources: dict[str, Source], scale: RelevanceScale) -> None:
    """Check the canonical tables (each with `_row`) against the data contract; raise on the first violation."""
    for name, frame in (("items", items), ("queries", queries), ("judgments", judgments)):
        if frame.empty:
            raise DataError(f"no {name}", file=sources[name].file)
    _unique(items, ["item_id"], sources["items"], "item")
    _unique(queries, ["query_id"], sources["queries"], "query")
    _unique(judgments, ["query_id", "item_id"], sources["judgments"], "judgment")
    relevance = judgments["relevance"].to_numpy()
    outside = (relevance < scale.minimum) | (relevance > scale.maximum)
    if outside.any():
        position = int(np.argmax(outside))
        raise sources["judgments"].error(
            f"label {float(relevance[position])!r} outside the scale [{scale.minimum}, {scale.maximum}]",
            judgments, position, "relevance")
    for column, known, what in (("query_id", queries["query_id"], "query"), ("item_id", items["item_id"], "item")):
        unknown = ~judgments[column].isin(known).to_numpy()
        if unknown.any():
            position = int(np.argmax(unknown))
            raise sources["judgments"].error(
                f"judgment points at unknown {what} {judgments[column].iloc[position]!r} "
                f"({int(unknown.sum())} such judgments)", judgments, position, column)
    if len(items) < 2:
        raise DataError(f"{len(items)} item: retrieval needs a catalogue of at least 2 items",
                        file=sources["items"].file)
    if not (relevance >= scale.threshold).any():
        raise DataError(f"no judgment reaches the relevance threshold {scale.threshold} (highest label "
                        f"{float(relevance.max())}): no query has a relevant item to learn or evaluate on",
                        file=sources["judgments"].file, column=sources["judgments"].column("relevance"))


def _unique(frame: pd.DataFrame, key: list[str], source: Source, what: str) -> None:
    duplicated = frame.duplicated(key, keep="first").to_numpy()
    if duplicated.any():
        position = int(np.argmax(duplicated))
        value = tuple(frame[key].iloc[position]) if len(key) > 1 else frame[key[0]].iloc[position]
        first = frame[frame[key].eq(frame[key].iloc[position]).all(axis=1)][ROW].iloc[0]
        raise source.error(f"duplicate {what} id {value!r} (first seen at row {first})", frame, position, key[-1])
