"""Tables in and out of `amlpromote score`: inputs read as a stream of record batches, outputs
written to a temporary name and renamed into place at the end.

Inputs are a CSV, parquet or JSON-lines file, a folder of them, or CSV on standard input. They
are read with pyarrow's streaming readers (`pyarrow.csv.open_csv`, `ParquetFile.iter_batches`,
`pyarrow.json.open_json`), so memory is bounded by a batch, never by the input. CSV columns are
read as text and the columns the model's signature types are converted here, column by
column, so a bad value is reported with its file, row and column (pyarrow's own CSV conversion
error names none of them) and every other column passes through as the text it was.

Outputs are one CSV/parquet/JSON-lines file, a folder mirroring an input folder, or JSON lines
on standard output. Files are written beside their final name and renamed at `commit()`, so a
failed or interrupted run leaves nothing (or, asked to, a `.partial`).

Imports pyarrow inside functions (the CLI imports this module at start); never imports typer,
rich, mlflow or pandas.
"""

from __future__ import annotations

import base64
import csv
import datetime as dt
import decimal
import io
import json
import os
import re
import secrets
import shutil
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, BinaryIO

from amlpromote.core.errors import BadInput, NotFound

if TYPE_CHECKING:
    import pyarrow as pa

FORMATS = ("csv", "parquet", "jsonl")
# The extension decides the format (case-insensitive); `.json` is read as JSON lines because
# that is what `mlflow models predict` and Spark write under that name.
INPUT_EXTENSIONS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl",
                    ".ndjson": "jsonl", ".json": "jsonl"}
OUTPUT_EXTENSIONS = {"csv": ".csv", "parquet": ".parquet", "jsonl": ".jsonl"}
MARKER = "_amlpromote_score.json"
DEFAULT_BATCH_ROWS = 65_536
STDIN_NAME = "-"

# pyarrow's read block: large enough for its parser to be fast (1 MB is 15% faster on heart),
# small because the CSV reader's peak memory is some 40 blocks (measured, pyarrow 25).
_BLOCK_BYTES = 1 << 19
# How much of the first CSV file is sampled to infer column types when there is no signature
# (pyarrow infers from its first block; the same amount, read once at open).
_SAMPLE_BYTES = 1 << 20
# The text that is a missing value in a CSV cell: pandas.read_csv's default na_values
# (pandas._libs.parsers.STR_NA_VALUES), which is what `mlflow models predict` and Azure ML's
# MLflow scoring script read a CSV with, so the model sees None/NaN where they would give it.
_NULL_TEXT = ("", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND",
              "1.#QNAN", "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null")
_FIX_VALUES = ("fix those values in the input, or score with a model whose signature takes them "
               "(without a signature, a CSV's types are those of its first megabyte)")


@dataclass(frozen=True)
class InputFile:
    """One file of the input."""

    path: Path | None  # None: standard input
    name: str  # as shown in messages: the path as given, or "-" for stdin
    format: str  # "csv" | "parquet" | "jsonl"


@dataclass
class Batch:
    """Consecutive rows of one input file."""

    file: InputFile
    first_row: int  # 0-based number, within its file, of the batch's first row
    data: pa.RecordBatch  # columns as read, schema == InputSet.schema

    @property
    def rows(self) -> int:
        return int(self.data.num_rows)

    def describe(self) -> str:
        """The batch's rows for a message, 1-based: "rows 65,537-131,072 of data/part-1.csv"."""
        return f"{_row_range(self.first_row, self.rows)} of {self.file.name}"


def _row_range(first_row: int, rows: int) -> str:
    if rows == 1:
        return f"row {first_row + 1:,}"
    if rows <= 0:
        return f"no rows after row {first_row:,}"
    return f"rows {first_row + 1:,}-{first_row + rows:,}"


class InputSet:
    """The files of an input, their one schema, and their rows as a stream of batches."""

    def __init__(self, files: list[InputFile], folder: Path | None, schema: pa.Schema,
                 converts: dict[str, pa.DataType], stdin: Any = None) -> None:
        self.files = files
        self.folder = folder
        self.schema = schema
        # Columns whose values are converted to the schema's type after reading (CSV text to
        # the signature's type, a later file's column to the first file's type).
        self._converts = converts
        self._stdin = stdin
        self._stdin_used = False

    def batches(self, rows: int = DEFAULT_BATCH_ROWS) -> Iterator[Batch]:
        """Every row, file by file in order, in batches of exactly `rows` rows except the last
        of each file (a batch never spans two files). Standard input can be read once."""
        if rows < 1:
            raise ValueError("rows must be at least 1")
        for file in self.files:
            position = 0
            for data in _rebatch(self._read(file), rows):
                yield Batch(file, position, data)
                position += data.num_rows

    def _read(self, file: InputFile) -> Iterator[pa.RecordBatch]:
        """The file's record batches as its reader yields them, converted to the schema."""
        if file.format == "parquet":
            blocks = _parquet_blocks(file)
        elif file.format == "jsonl":
            blocks = _jsonl_blocks(file, self.schema)
        else:
            blocks = _csv_blocks(file, self._csv_source(file), self.schema.names)
        position = 0
        for block in blocks:
            yield _conform(block, self.schema, self._converts, file, position)
            position += block.num_rows

    def _csv_source(self, file: InputFile) -> Any:
        if file.path is not None:
            return str(file.path)
        if self._stdin_used or self._stdin is None:
            raise RuntimeError("standard input can be read only once")
        self._stdin_used = True
        return self._stdin


# --- opening an input ---------------------------------------------------------------------------


def open_input(spec: str, types: dict[str, pa.DataType] | None = None,
               stdin: BinaryIO | None = None) -> InputSet:
    """Open `spec` (a file, a folder of files, or "-" for CSV on standard input) for streaming.

    `types`: the model signature's columns and their arrow types. CSV and JSON-lines columns
    named there are converted to those types (a value that does not convert is BadInput naming
    file, row, column and value); every other CSV column is read as text, untouched. Without
    `types`, column types are inferred from the first CSV file's first megabyte, never as dates
    or times. Parquet columns are what the file says. Reads only headers, footers and that
    sample: the rows are read by `InputSet.batches`.
    """
    if spec == STDIN_NAME:
        stream = stdin if stdin is not None else sys.stdin.buffer
        file = InputFile(None, STDIN_NAME, "csv")
        header, sample = _read_csv_head(stream, file, sample=types is None)
        replay = _PrefixedStream(header + sample, stream)
        schema, converts = _csv_schema(file, header, sample, types)
        return InputSet([file], None, schema, converts, stdin=replay)
    path = Path(spec)
    if not path.exists():
        raise NotFound(f"{spec}: no such file or folder",
                       hint="check --input: a CSV, parquet or JSON-lines file, a folder of "
                            "them, or - for CSV on standard input")
    if path.is_dir():
        files = _folder_files(spec, path)
        folder: Path | None = path
    else:
        files = [InputFile(path, spec, _format_of(path, spec))]
        folder = None
    return _open_files(files, folder, types)


def _format_of(path: Path, name: str) -> str:
    fmt = INPUT_EXTENSIONS.get(path.suffix.lower())
    if fmt is None:
        raise BadInput(f"{name}: not a CSV, parquet or JSON-lines file (by its extension)",
                       hint="name a .csv, .parquet/.pq or .jsonl/.ndjson/.json file, or a "
                            "folder of them")
    return fmt


def _folder_files(spec: str, folder: Path) -> list[InputFile]:
    """The folder's data files, recursively, by relative path; hidden files and the
    `_SUCCESS`/`_committed_*`/`_temporary` markers Spark and Hadoop leave are skipped."""
    found: list[tuple[str, Path]] = []
    others: list[str] = []
    try:
        for root, dirs, names in os.walk(folder, onerror=_raise):
            dirs[:] = [d for d in dirs if not d.startswith((".", "_"))]
            for name in names:
                if name.startswith((".", "_")):
                    continue
                path = Path(root) / name
                rel = path.relative_to(folder).as_posix()
                if path.suffix.lower() in INPUT_EXTENSIONS:
                    found.append((rel, path))
                else:
                    others.append(rel)
    except OSError as exc:
        raise BadInput(f"{spec}: cannot list the folder ({exc.strerror or exc})",
                       hint="check the folder's permissions") from exc
    if not found:
        seen = f" (it has {', '.join(sorted(others)[:3])}{', ...' if len(others) > 3 else ''})" \
            if others else ""
        raise BadInput(f"{spec}: no CSV, parquet or JSON-lines files in the folder{seen}",
                       hint="point --input at a folder of .csv, .parquet or .jsonl files")
    found.sort(key=lambda item: item[0])
    return [InputFile(path, os.path.join(spec, rel), INPUT_EXTENSIONS[path.suffix.lower()])
            for rel, path in found]


def _raise(exc: OSError) -> None:
    raise exc


def _open_files(files: list[InputFile], folder: Path | None,
                types: dict[str, pa.DataType] | None) -> InputSet:
    """The first file decides the schema; every other file must have the same column names
    (any order), and parquet files the same types too (parquet is never converted)."""
    first = files[0]
    schema, converts = _file_schema(first, types)
    names = set(schema.names)
    for file in files[1:]:
        other = _file_columns(file)
        missing = [n for n in schema.names if n not in other]
        extra = [n for n in other if n not in names]
        if missing or extra:
            parts = []
            if missing:
                parts.append("no column " + ", ".join(repr(n) for n in missing))
            if extra:
                parts.append("extra column " + ", ".join(repr(n) for n in extra))
            raise BadInput(f"{file.name} does not have the columns of {first.name}: "
                           f"{'; '.join(parts)}",
                           hint="score files with the same columns together, or score them "
                                "separately")
        if file.format == "parquet":
            for name, kind in other.items():
                expected = schema.field(name).type
                if kind is not None and kind != expected:
                    raise BadInput(f"{file.name}: column {name!r} is {kind}, {expected} in "
                                   f"{first.name}",
                                   hint="score files with the same column types together, or "
                                        "score them separately")
    # A later file's column may need converting to the first file's type (CSV text to the
    # inferred or parquet type): any non-text column is a conversion target.
    all_converts = {f.name: f.type for f in schema if not _is_text(f.type)} \
        if len(files) > 1 else converts
    return InputSet(files, folder, schema, all_converts)


def _file_schema(file: InputFile,
                 types: dict[str, pa.DataType] | None) -> tuple[pa.Schema, dict[str, Any]]:
    if file.format == "parquet":
        schema = _parquet_file(file).schema_arrow
        _check_unique(schema.names, file, "")
        return _nullable(schema), {}
    if file.format == "jsonl":
        return _jsonl_schema(file, types)
    with _open_binary(file) as stream:
        header, sample = _read_csv_head(stream, file, sample=types is None)
    return _csv_schema(file, header, sample, types)


def _file_columns(file: InputFile) -> dict[str, pa.DataType | None]:
    """A file's column names (and types where the file says them) from its header or footer."""
    if file.format == "parquet":
        return {f.name: f.type for f in _parquet_file(file).schema_arrow}
    if file.format == "jsonl":
        return dict.fromkeys(_jsonl_schema(file, None)[0].names)
    with _open_binary(file) as stream:
        header, _ = _read_csv_head(stream, file, sample=False)
    return dict.fromkeys(_csv_names(header, file))


def _open_binary(file: InputFile) -> BinaryIO:
    assert file.path is not None
    try:
        return open(file.path, "rb")
    except OSError as exc:
        raise BadInput(f"{file.name}: cannot read the file ({exc.strerror or exc})",
                       hint="check the file's permissions") from exc


def _nullable(schema: pa.Schema) -> pa.Schema:
    import pyarrow as pa

    # Files of one folder may differ in nullability and metadata (pandas writes its own);
    # neither matters to scoring, and batches need one schema.
    return pa.schema([pa.field(f.name, f.type) for f in schema])


def _is_text(kind: pa.DataType) -> bool:
    import pyarrow as pa

    return bool(pa.types.is_string(kind) or pa.types.is_large_string(kind))


# --- CSV ----------------------------------------------------------------------------------------


def _read_csv_head(stream: BinaryIO, file: InputFile, sample: bool) -> tuple[bytes, bytes]:
    """The header record's bytes and, if asked, about `_SAMPLE_BYTES` of whole records after
    it. Read record by record with the csv module, so a quoted newline in a header or a value
    does not cut a record, and only those bytes are consumed from the stream."""
    consumed: list[bytes] = []
    size = [0]

    def lines() -> Iterator[str]:
        while True:
            line = stream.readline()
            if not line:
                return
            consumed.append(line)
            size[0] += len(line)
            yield line.decode("utf-8", errors="replace")

    reader = csv.reader(lines())
    try:
        next(reader)
    except StopIteration:
        raise BadInput(f"{file.name}: the file is empty (a CSV file needs a header line)",
                       hint="write the column names on the first line") from None
    except csv.Error as exc:
        raise BadInput(f"{file.name} line 1: not a CSV header ({exc})",
                       hint="write the column names on the first line") from exc
    except OSError as exc:
        raise BadInput(f"{file.name}: cannot read the file ({exc.strerror or exc})",
                       hint="check the file's permissions") from exc
    header = b"".join(consumed)
    consumed.clear()
    if sample:
        start = size[0]
        try:
            for _ in reader:
                if size[0] - start >= _SAMPLE_BYTES:
                    break
        except csv.Error:
            pass  # the reader proper reports the line
    return header, b"".join(consumed)


def _csv_names(header: bytes, file: InputFile) -> list[str]:
    try:
        text = header.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BadInput(f"{file.name} line 1: the header is not UTF-8 text",
                       hint="save the file as UTF-8") from exc
    names = next(csv.reader(io.StringIO(text)))
    _check_unique(names, file, " line 1")
    return names


def _check_unique(names: list[str], file: InputFile, where: str) -> None:
    """A column name given twice would make every column after it ambiguous (pandas renames
    the second `a.1`, pyarrow keeps both): refused, so a model never gets the wrong one."""
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise BadInput(f"{file.name}{where}: column {name!r} appears twice",
                           hint="give every column its own name")
        seen.add(name)


def _csv_schema(file: InputFile, header: bytes, sample: bytes,
                types: dict[str, pa.DataType] | None) -> tuple[pa.Schema, dict[str, Any]]:
    """The schema a CSV file reads as, and the columns converted from text to get there."""
    import pyarrow as pa

    names = _csv_names(header, file)
    if types is not None:
        kinds = {n: types.get(n, pa.string()) for n in names}
    else:
        kinds = _infer_csv_types(header + sample, names)
    schema = pa.schema([pa.field(n, kinds[n]) for n in names])
    return schema, {n: k for n, k in kinds.items() if not _is_text(k)}


def _infer_csv_types(head: bytes, names: list[str]) -> dict[str, pa.DataType]:
    """pyarrow's inference on the sample, except that text never becomes a date or time
    (pandas.read_csv would not either) and a column with no values in the sample is text."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    try:
        sample = pacsv.read_csv(io.BytesIO(head), parse_options=pacsv.ParseOptions(
            newlines_in_values=True))
    except pa.ArrowInvalid:
        # The reader proper reports what is wrong with those lines.
        return {n: pa.string() for n in names}
    kinds = {}
    for n, f in zip(names, sample.schema, strict=False):
        temporal = pa.types.is_temporal(f.type)
        kinds[n] = pa.string() if temporal or pa.types.is_null(f.type) else f.type
    return {n: kinds.get(n, pa.string()) for n in names}


def _csv_blocks(file: InputFile, source: Any, names: list[str]) -> Iterator[pa.RecordBatch]:
    """The file's rows as text columns, block by block, with the line of a ragged row.
    `names`: the input's columns (every file of an input has the same, in any order)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    bad_rows: list[Any] = []

    def on_invalid_row(row: Any) -> str:
        bad_rows.append(row)
        return "error"

    rows = 0
    try:
        reader = pacsv.open_csv(
            source,
            read_options=pacsv.ReadOptions(block_size=_BLOCK_BYTES),
            parse_options=pacsv.ParseOptions(newlines_in_values=True,
                                             invalid_row_handler=on_invalid_row),
            # Every column as text; the columns to convert are converted by `_conform`. A
            # missing-value word is a null in text columns too, as pandas reads it (an empty
            # cell reaching a model as '' instead of NaN changes what an imputer does).
            convert_options=pacsv.ConvertOptions(
                column_types=dict.fromkeys(names, pa.string()),
                null_values=list(_NULL_TEXT), strings_can_be_null=True))
        for block in reader:
            rows += block.num_rows
            yield block
    except pa.ArrowInvalid as exc:
        if bad_rows:
            raise _ragged_row(file, bad_rows[0], rows, names) from exc
        raise BadInput(f"{file.name} after row {rows:,}: {_arrow_message(exc)}",
                       hint="fix the file, or re-export it as UTF-8 CSV") from exc
    except OSError as exc:
        raise BadInput(f"{file.name} after row {rows:,}: cannot read the file "
                       f"({exc.strerror or exc})", hint="check the file") from exc


def _ragged_row(file: InputFile, row: Any, rows_before: int, names: list[str]) -> BadInput:
    """BadInput for a row with the wrong number of fields. pyarrow knows the row's line only
    when it parses on one thread, so a file is parsed again that way (only on this error)."""
    line = row.number
    if line is None and file.path is not None:
        line = _ragged_line(file, names)
    what = f"expected {row.expected_columns} fields (as the header), got {row.actual_columns}"
    where = f"line {line:,}" if line is not None else f"after row {rows_before:,}"
    return BadInput(f"{file.name} {where}: {what}",
                    hint="fix that line: every row needs as many fields as the header "
                         "(quote values that contain commas)")


def _ragged_line(file: InputFile, names: list[str]) -> int | None:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    found: list[int | None] = []

    def on_invalid_row(row: Any) -> str:
        found.append(row.number)
        return "error"

    try:
        reader = pacsv.open_csv(
            str(file.path),
            read_options=pacsv.ReadOptions(block_size=_BLOCK_BYTES, use_threads=False),
            parse_options=pacsv.ParseOptions(newlines_in_values=True,
                                             invalid_row_handler=on_invalid_row),
            convert_options=pacsv.ConvertOptions(
                column_types=dict.fromkeys(names, pa.string())))
        for _ in reader:
            pass
    except (pa.ArrowInvalid, OSError):
        pass
    return found[0] if found else None


class _PrefixedStream(io.RawIOBase):
    """Standard input with the bytes already read from it (header and sample) put back in
    front, so pyarrow reads the whole stream once, as a stream."""

    def __init__(self, prefix: bytes, rest: BinaryIO) -> None:
        super().__init__()
        self._prefix = memoryview(prefix)
        self._rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._prefix:
            n = min(len(buffer), len(self._prefix))
            buffer[:n] = self._prefix[:n]
            self._prefix = self._prefix[n:]
            return n
        data = self._rest.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)


# --- parquet ------------------------------------------------------------------------------------


def _parquet_file(file: InputFile) -> Any:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(str(file.path))
    except (pa.ArrowInvalid, pa.ArrowException) as exc:
        raise BadInput(f"{file.name}: not a parquet file ({_arrow_message(exc)})",
                       hint="check the file: its extension says parquet") from exc
    except OSError as exc:
        raise BadInput(f"{file.name}: cannot read the file ({exc.strerror or exc})",
                       hint="check the file's permissions") from exc


def _parquet_blocks(file: InputFile) -> Iterator[pa.RecordBatch]:
    import pyarrow as pa

    parquet = _parquet_file(file)
    rows = 0
    try:
        for block in parquet.iter_batches(batch_size=DEFAULT_BATCH_ROWS):
            rows += block.num_rows
            yield block
    except (pa.ArrowException, OSError) as exc:
        raise BadInput(f"{file.name} after row {rows:,}: cannot read the parquet data "
                       f"({_arrow_message(exc)})", hint="check the file") from exc


# --- JSON lines ---------------------------------------------------------------------------------


def _jsonl_reader(file: InputFile, explicit: pa.Schema | None) -> Any:
    import pyarrow as pa
    import pyarrow.json as pajson

    parse = pajson.ParseOptions(explicit_schema=explicit, unexpected_field_behavior="infer") \
        if explicit is not None else pajson.ParseOptions()
    try:
        return pajson.open_json(str(file.path),
                                read_options=pajson.ReadOptions(block_size=_BLOCK_BYTES),
                                parse_options=parse)
    except pa.ArrowInvalid as exc:
        raise _json_error(file, exc, 0) from exc
    except OSError as exc:
        raise BadInput(f"{file.name}: cannot read the file ({exc.strerror or exc})",
                       hint="check the file's permissions") from exc


def _jsonl_schema(file: InputFile,
                  types: dict[str, pa.DataType] | None) -> tuple[pa.Schema, dict[str, Any]]:
    import pyarrow as pa

    inferred = _jsonl_reader(file, None).schema
    if len(inferred) == 1 and _request_document(file):
        raise _request_error(file)
    kinds = {f.name: (types or {}).get(f.name, f.type) for f in inferred}
    schema = pa.schema([pa.field(n, k) for n, k in kinds.items()])
    return schema, {f.name: f.type for f in schema if f.type != inferred.field(f.name).type}


def _jsonl_blocks(file: InputFile, schema: pa.Schema) -> Iterator[pa.RecordBatch]:
    """The file's rows. Floating columns are read as such from the start, so an integer in the
    first block does not make a later 1.5 an error."""
    import pyarrow as pa

    # As doubles: pyarrow would parse 1e40 into a float32 column as infinity; _conform
    # narrows them, and refuses a value beyond a float's range.
    explicit = pa.schema([pa.field(f.name, pa.float64()) for f in schema
                          if pa.types.is_floating(f.type)])
    reader = _jsonl_reader(file, explicit if len(explicit) else None)
    rows = 0
    try:
        for block in reader:
            rows += block.num_rows
            yield block
    except pa.ArrowInvalid as exc:
        raise _json_error(file, exc, rows) from exc


_JSON_CHANGED = re.compile(r"Column\(/(.*?)\) changed from (\w+) to (\w+) in row (\d+)")
_JSON_ROW = re.compile(r"^JSON parse error: (.*?)\.? in row (\d+)")


# An online endpoint's request document (Azure ML's `input_data`, MLflow serving's
# `dataframe_split`/`dataframe_records`/`instances`/`inputs`): one object whose only key holds
# the rows, where a JSON-lines input holds one row per line.
_REQUEST_START = re.compile(
    rb'^\s*\{\s*"(input_data|dataframe_split|dataframe_records|instances|inputs)"\s*:\s*[\[{]')


def _request_document(file: InputFile) -> bool:
    if file.path is None:  # standard input: what was read of it is gone
        return False
    try:
        with open(file.path, "rb") as handle:
            head = handle.read(4096)
    except OSError:
        return False
    return _REQUEST_START.match(head.lstrip(b"\xef\xbb\xbf")) is not None


def _request_error(file: InputFile) -> BadInput:
    return BadInput(f"{file.name} is an endpoint request (one JSON document with the rows "
                    "inside), not rows", hint=f"send it with amlpromote endpoints invoke NAME "
                    f"--request-file {file.name}; score reads CSV, parquet or JSON lines (one "
                    "row object per line)")


def _json_error(file: InputFile, exc: Exception, rows_before: int) -> BadInput:
    if rows_before == 0 and _request_document(file):
        return _request_error(file)
    message = _arrow_message(exc)
    hint = "fix that line: one JSON object per line, each column one type"
    changed = _JSON_CHANGED.search(message)
    if changed:
        column, was, now, row = changed.groups()
        return BadInput(f"{file.name} row {rows_before + int(row) + 1:,}: column {column!r} "
                        f"has a {now} where earlier rows have a {was}", hint=hint)
    at_row = _JSON_ROW.search(message)
    if at_row:
        what, row = at_row.groups()
        return BadInput(f"{file.name} row {rows_before + int(row) + 1:,}: not a JSON object "
                        f"({what.lower()})", hint=hint)
    if "Empty JSON" in message:
        return BadInput(f"{file.name}: the file is empty", hint="write one JSON object a line")
    return BadInput(f"{file.name} after row {rows_before:,}: {message}", hint=hint)


# --- converting and re-batching -----------------------------------------------------------------


def _conform(block: pa.RecordBatch, schema: pa.Schema, converts: dict[str, pa.DataType],
             file: InputFile, first_row: int) -> pa.RecordBatch:
    """The block with the schema's columns in its order, converted where the schema says;
    every value that does not convert is reported at once, one per column."""
    import pyarrow as pa

    columns = []
    problems = []
    for f in schema:
        index = block.schema.get_field_index(f.name)
        column = block.column(index) if index >= 0 else pa.nulls(block.num_rows, f.type)
        if column.type != f.type and (f.name in converts or not _is_text(column.type)):
            converted, problem = _convert(column, f.type, f.name, first_row)
            if problem:
                problems.append(problem)
            column = converted
        elif column.type != f.type:
            column = column.cast(f.type)
        columns.append(column)
    if problems:
        raise BadInput(f"{file.name} {'; '.join(problems)}", hint=_FIX_VALUES)
    return pa.RecordBatch.from_arrays(columns, schema=schema)


def _convert(column: pa.Array, kind: pa.DataType, name: str,
             first_row: int) -> tuple[pa.Array, str | None]:
    import pyarrow as pa
    import pyarrow.compute as pc

    source = column
    try:
        # Clean columns (most of them) convert in one cast.
        return _cast(column, kind), None
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    if _is_text(column.type) and not _is_text(kind):
        # CSV text: surrounding spaces are not part of a number, and the missing-value words
        # ("", "NA", ...) are missing values, as in pyarrow's and pandas' CSV readers.
        column = pc.utf8_trim_whitespace(column)
        column = pc.if_else(pc.is_in(column, value_set=pa.array(_NULL_TEXT)),
                            pa.scalar(None, column.type), column)
        try:
            return _cast(column, kind), None
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
    bad = _first_bad(column, kind)
    value = source[bad].as_py()
    shown = repr(value if not isinstance(value, str) or len(value) <= 40 else value[:40] + "...")
    what = f"is not {_type_words(kind)}"
    if pa.types.is_float32(kind) and _casts(column.slice(bad, 1), pa.float64()):
        what = "is beyond a float's range (about ±3.4e38)"
    return column, f"row {first_row + bad + 1:,}: column {name!r} value {shown} {what}"


def _cast(column: pa.Array, kind: pa.DataType) -> pa.Array:
    """pc.cast, except that a number beyond a float's range is an error (ArrowInvalid):
    pyarrow parses text such as '1e40' into a float32 infinity, a value the row never had."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if not pa.types.is_float32(kind) or pa.types.is_float32(column.type):
        return pc.cast(column, kind)
    wide = pc.cast(column, pa.float64())
    narrow = pc.cast(wide, kind)
    if pc.any(pc.and_(pc.is_inf(narrow), pc.invert(pc.is_inf(wide)))).as_py():
        raise pa.ArrowInvalid("a value beyond a float's range")
    return narrow


def _casts(column: pa.Array, kind: pa.DataType) -> bool:
    import pyarrow as pa

    try:
        _cast(column, kind)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return False
    return True


def _first_bad(column: pa.Array, kind: pa.DataType) -> int:
    """The index of the first value that does not cast, by halving (each half is one cast)."""

    def fails(offset: int, length: int) -> bool:
        return not _casts(column.slice(offset, length), kind)

    lo, hi = 0, len(column)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fails(lo, mid - lo):
            hi = mid
        else:
            lo = mid
    return lo


def _type_words(kind: pa.DataType) -> str:
    """The type as the signature names it (MLflow's words), for messages."""
    import pyarrow as pa

    if pa.types.is_int64(kind):
        return "a long"
    if pa.types.is_integer(kind):
        return "an integer"
    if pa.types.is_float64(kind):
        return "a double"
    if pa.types.is_floating(kind):
        return "a float"
    if pa.types.is_boolean(kind):
        return "a boolean"
    if pa.types.is_temporal(kind):
        return "a datetime"
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        return "binary"
    return f"a {kind}"


def _rebatch(blocks: Iterable[pa.RecordBatch], rows: int) -> Iterator[pa.RecordBatch]:
    """Batches of exactly `rows` rows (the last one fewer) from blocks of any size."""
    import pyarrow as pa

    pending: list[pa.RecordBatch] = []
    count = 0
    for block in blocks:
        while block.num_rows:
            take = min(rows - count, block.num_rows)
            pending.append(block.slice(0, take))
            count += take
            block = block.slice(take)
            if count == rows:
                yield pending[0] if len(pending) == 1 else pa.concat_batches(pending)
                pending, count = [], 0
    if count:
        yield pending[0] if len(pending) == 1 else pa.concat_batches(pending)


def _arrow_message(exc: BaseException) -> str:
    # pyarrow messages can carry a C++ traceback after a newline; the first line says it.
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


# --- outputs ------------------------------------------------------------------------------------


@dataclass
class OutputSummary:
    """What was written, for the summary line."""

    paths: list[str]  # the files written (or kept as partial)
    rows: int
    files: int
    location: str  # the output as the summary line names it: a file, a folder, or "-"


@dataclass
class _Plan:
    kind: str  # "stdout" | "file" | "folder"
    format: str | None  # file and stdout: the format; folder: per file in `names`
    final: Path | None
    names: dict[InputFile, tuple[str, str]] = field(default_factory=dict)  # rel path, format


def check_output(spec: str, inputs: InputSet, format: str | None = None) -> None:
    """Every refusal `open_output` makes, without writing anything: the CLI calls it before
    it loads a model."""
    _plan_output(spec, inputs, format)


def _plan_output(spec: str, inputs: InputSet, format: str | None) -> _Plan:
    hint_kinds = ("name a .csv, .parquet or .jsonl file, a folder (for a folder input), or - "
                  "for JSON lines on standard output")
    if format is not None and format not in FORMATS:
        raise BadInput(f"output format {format!r} is not one of {', '.join(FORMATS)}",
                       hint="choose csv, parquet or jsonl")
    if spec == "-":
        fmt = format or "jsonl"
        if fmt == "parquet":
            raise BadInput("parquet cannot be written to standard output",
                           hint="name a .parquet file with --output")
        return _Plan("stdout", fmt, None)
    final = Path(spec)
    by_extension = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl",
                    ".ndjson": "jsonl"}.get(final.suffix.lower())
    if inputs.folder is not None and by_extension is None:
        plan = _Plan("folder", None, final, _folder_names(inputs, format))
    elif by_extension is not None or format is not None:
        plan = _Plan("file", format or by_extension, final)
    else:
        raise BadInput(f"--output {spec}: not a .csv, .parquet or .jsonl file name",
                       hint=hint_kinds)
    _check_place(spec, plan, inputs)
    return plan


def _folder_names(inputs: InputSet, format: str | None) -> dict[InputFile, tuple[str, str]]:
    """Each input file's output: the same relative path and stem, in `format`, else in the
    input's format (JSON lines in, CSV out)."""
    assert inputs.folder is not None
    names: dict[InputFile, tuple[str, str]] = {}
    seen: dict[str, InputFile] = {}
    for file in inputs.files:
        assert file.path is not None
        rel = file.path.relative_to(inputs.folder)
        fmt = format or ("csv" if file.format == "jsonl" else file.format)
        out = rel if fmt == file.format else rel.with_suffix(OUTPUT_EXTENSIONS[fmt])
        key = out.as_posix()
        if key.lower() in seen:
            raise BadInput(f"{seen[key.lower()].name} and {file.name} would both be written "
                           f"to {key} in the output folder",
                           hint="choose the output format with --output-format, or score them "
                                "separately")
        seen[key.lower()] = file
        names[file] = (key, fmt)
    return names


def _check_place(spec: str, plan: _Plan, inputs: InputSet) -> None:
    assert plan.final is not None
    final = plan.final.resolve()
    for file in inputs.files:
        if file.path is not None and file.path.resolve() == final:
            raise BadInput(f"--output {spec} is the input file {file.name}",
                           hint="choose another --output")
    if inputs.folder is not None:
        folder = inputs.folder.resolve()
        if final.is_relative_to(folder):
            raise BadInput(f"--output {spec} is inside the input folder {inputs.folder}",
                           hint="choose an --output outside the input folder (a later run "
                                "would read it as input)")
        if folder.is_relative_to(final):
            raise BadInput(f"--output {spec} contains the input folder {inputs.folder}",
                           hint="choose another --output")
    for parent in final.parents:
        if parent.exists():
            if not parent.is_dir():
                raise BadInput(f"--output {spec}: {parent} is a file, not a folder",
                               hint="choose another --output")
            break
    if plan.kind == "file" and final.is_dir():
        raise BadInput(f"--output {spec} is a folder", hint="name a file, or remove the folder")
    if plan.kind == "folder" and final.exists():
        if not final.is_dir():
            raise BadInput(f"--output {spec} is a file; a folder input writes a folder",
                           hint="remove the file or choose another --output")
        if not _replaceable_folder(final):
            raise BadInput(f"--output {spec} exists and was not written by amlpromote score; "
                           "remove it or choose another --output",
                           hint="remove the folder or choose another --output")


def _replaceable_folder(folder: Path) -> bool:
    return (folder / MARKER).is_file() or not any(folder.iterdir())


def open_output(spec: str, inputs: InputSet, format: str | None = None,
                keep_partial: bool = False, stdout: BinaryIO | None = None) -> OutputSink:
    """Open the output `spec` for the rows of `inputs`: a .csv/.parquet (or .jsonl) file, a
    folder mirroring a folder input (`format`, or each input's format, JSON lines as CSV), or
    "-" for JSON lines on standard output. Written to `.{name}.partial-XXXX` beside the final
    name until `commit()`."""
    plan = _plan_output(spec, inputs, format)
    if plan.kind == "stdout":
        return OutputSink(plan, inputs, spec, keep_partial, None,
                          stdout if stdout is not None else sys.stdout.buffer)
    assert plan.final is not None
    temp = plan.final.parent / f".{plan.final.name}.partial-{secrets.token_hex(4)}"
    made: list[Path] = []
    try:
        made = make_parents(plan.final.parent)
        if plan.kind == "folder":
            temp.mkdir()
    except OSError as exc:
        remove_made(made)
        raise BadInput(f"--output {spec}: cannot create it ({exc.strerror or exc})",
                       hint="check the folder's permissions or choose another --output") from exc
    return OutputSink(plan, inputs, spec, keep_partial, temp, None, made)


def make_parents(folder: Path) -> list[Path]:
    """Create `folder` with its missing parents (an --output in a new folder) and return the
    ones this created, deepest first, for remove_made: a run that fails leaves the file system
    as it found it, not a tree of empty folders."""
    missing = []
    for path in (folder, *folder.parents):
        if path.exists():
            break
        missing.append(path)
    folder.mkdir(parents=True, exist_ok=True)
    return missing


def remove_made(folders: list[Path]) -> None:
    """Remove the folders make_parents created, deepest first, while they are empty: one that
    holds something (a kept partial output, another program's file) stays, with its parents."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


class OutputSink:
    """Tables written in input order to temporary files, renamed into place by `commit()`.
    As a context manager, an exception (Ctrl-C too) in the block aborts; leaving the block
    without commit aborts as well."""

    def __init__(self, plan: _Plan, inputs: InputSet, spec: str, keep_partial: bool,
                 temp: Path | None, stream: BinaryIO | None, made: list[Path] | None = None
                 ) -> None:
        self._plan = plan
        self._made = made or []  # folders open_output created, removed again by abort()
        self._inputs = inputs
        self._spec = spec
        self._keep_partial = keep_partial
        self._temp = temp
        self._stream = stream
        self._schema: pa.Schema | None = None
        self._writer: _Writer | None = None
        self._writer_file: InputFile | None = None
        self._done: list[InputFile] = []
        self._paths: list[str] = []
        self._rows = 0
        self._state = "open"
        self.kept: OutputSummary | None = None  # where a kept partial output is, after abort

    def __enter__(self) -> OutputSink:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._state in ("open", "renaming"):
            self.abort()

    def write(self, file: InputFile, table: pa.Table | pa.RecordBatch) -> None:
        """Append `table` (rows of `file`, in order). Its schema must be the first table's."""
        import pyarrow as pa

        if self._state != "open":
            raise RuntimeError(f"output is {self._state}")
        schema = _nullable(table.schema)
        if self._schema is None:
            self._schema = schema
        elif not schema.equals(self._schema):
            raise RuntimeError(f"a table with another schema was written: {schema} after "
                               f"{self._schema}")
        batches = table.to_batches() if isinstance(table, pa.Table) else [table]
        writer = self._writer_for(file)
        for batch in batches:
            batch = pa.RecordBatch.from_arrays(batch.columns, schema=self._schema)
            writer.write(batch)
            self._rows += batch.num_rows
        if not batches:
            writer.write(_empty_batch(self._schema))

    def _writer_for(self, file: InputFile) -> _Writer:
        assert self._schema is not None
        if self._writer is not None and (self._plan.kind != "folder"
                                         or self._writer_file == file):
            return self._writer
        if self._plan.kind == "folder":
            if file in self._done or file not in self._plan.names:
                raise RuntimeError(f"{file.name} written out of order or not an input")
            self._close_writer()
            assert self._temp is not None
            rel, fmt = self._plan.names[file]
            path = self._temp / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = _open_writer(fmt, path, self._schema)
            self._writer_file = file
            assert self._plan.final is not None
            self._paths.append(str(self._plan.final / rel))
        elif self._plan.kind == "stdout":
            assert self._stream is not None and self._plan.format is not None
            self._writer = _open_writer(self._plan.format, None, self._schema, self._stream)
            self._paths.append("-")
        else:
            assert self._temp is not None and self._plan.format is not None
            self._writer = _open_writer(self._plan.format, self._temp, self._schema)
            self._paths.append(str(self._plan.final))
        return self._writer

    def _close_writer(self) -> None:
        if self._writer is not None:
            writer, self._writer = self._writer, None
            writer.close()
            if self._writer_file is not None:
                self._done.append(self._writer_file)
            self._writer_file = None

    def commit(self) -> OutputSummary:
        """Finish every file and rename the output into place (replacing an output file, or a
        folder this tool wrote). Input files that had no rows get an output with the columns."""
        if self._state != "open":
            raise RuntimeError(f"output is {self._state}")
        schema = self._schema if self._schema is not None else self._inputs.schema
        self._schema = schema
        if self._plan.kind == "folder":
            for file in self._inputs.files:
                if file not in self._done and file != self._writer_file:
                    self._writer_for(file).write(_empty_batch(schema))
        elif self._writer is None:
            self._writer_for(self._inputs.files[0]).write(_empty_batch(schema))
        self._close_writer()
        files = len(self._paths)
        if self._plan.kind == "stdout":
            self._state = "committed"
            return OutputSummary(["-"], self._rows, files, "-")
        assert self._temp is not None and self._plan.final is not None
        final = self._plan.final
        # A signal can land between the rename and the next line: abort() then looks at
        # whether the temporary name is gone, and so never calls a complete output missing.
        self._state = "renaming"
        if self._plan.kind == "folder":
            marker = {"tool": "amlpromote score", "rows": self._rows, "files": files,
                      "time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
            (self._temp / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
            replace_folder(self._temp, final)
        else:
            os.replace(self._temp, final)
        self._state = "committed"
        return OutputSummary(self._paths, self._rows, files, str(final))

    @property
    def committed(self) -> bool:
        return self._state == "committed"

    def left_behind(self) -> str:
        """What an aborted (or committed) output left, in words for the failure's line."""
        if self.committed:
            where = "were printed" if self._stream is not None else f"are in {self._spec}"
            return f"all {self._rows:,} rows {where}"
        if self._stream is not None:
            return "the rows before it were printed" if self._rows else "nothing was printed"
        if self.kept is not None:
            # No count: a signal can land between a batch's write and its count.
            return f"the rows scored before it are kept in {self.kept.location}"
        return f"nothing was written to {self._spec}"

    def abort(self) -> OutputSummary | None:
        """Remove the temporary output, or with keep_partial rename it to `{name}.partial` and
        return where it is. Idempotent, and safe to call from a KeyboardInterrupt handler."""
        if self._state == "renaming":
            assert self._temp is not None
            if not self._temp.exists():
                self._state = "committed"  # the rename happened: the output is complete
                return None
            self._state = "open"
        if self._state != "open":
            return self.kept
        self._state = "aborted"
        writer, self._writer = self._writer, None
        if writer is not None:
            try:
                # A kept partial parquet file needs its footer to be readable.
                if self._keep_partial:
                    writer.close()
                else:
                    writer.discard()
            except Exception:
                pass  # aborting: the error that caused it is the one to report
        if self._temp is None or self._plan.final is None:
            return None
        temp, final = self._temp, self._plan.final
        try:
            if self._keep_partial and temp.exists():
                kept = final.parent / f"{final.name}.partial"
                _remove(kept)
                os.replace(temp, kept)
                self.kept = OutputSummary([str(kept)], self._rows, len(self._paths), str(kept))
                return self.kept
            _remove(temp)
            remove_made(self._made)
        except OSError:
            pass
        return None


def replace_folder(temp: Path, final: Path) -> None:
    """Rename the written folder into place; a folder already there (empty or ours, checked
    at open) is moved aside first and removed after, so `final` is never half-written."""
    if final.exists():
        aside = final.parent / f".{final.name}.replaced-{secrets.token_hex(4)}"
        os.replace(final, aside)
        os.replace(temp, final)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.replace(temp, final)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)


def _empty_batch(schema: pa.Schema) -> pa.RecordBatch:
    import pyarrow as pa

    return pa.RecordBatch.from_arrays([pa.array([], type=f.type) for f in schema],
                                      schema=schema)


# --- writers ------------------------------------------------------------------------------------


class _Writer:
    def write(self, batch: pa.RecordBatch) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def discard(self) -> None:
        """Release the file without finishing it (the output is being removed)."""
        self.close()


def _open_writer(fmt: str, path: Path | None, schema: pa.Schema,
                 stream: BinaryIO | None = None) -> _Writer:
    if fmt == "parquet":
        assert path is not None
        return _ParquetWriter(path, schema)
    if fmt == "csv":
        return _CsvWriter(path, stream)
    return _JsonlWriter(path, stream)


class _ParquetWriter(_Writer):
    def __init__(self, path: Path, schema: pa.Schema) -> None:
        import pyarrow.parquet as pq

        self._writer = pq.ParquetWriter(str(path), schema)

    def write(self, batch: pa.RecordBatch) -> None:
        if batch.num_rows:  # one row group per write; none for an empty table
            self._writer.write_batch(batch)

    def close(self) -> None:
        self._writer.close()


class _CsvWriter(_Writer):
    """CSV with the header once and values quoted only where a value needs it (a comma, a
    quote, a line break), so text columns read from a CSV input come out as they went in.
    pyarrow's "needed" style quotes every string, so each batch chooses: unquoted when none of
    its text needs quotes, else pyarrow's quoting."""

    def __init__(self, path: Path | None, stream: BinaryIO | None) -> None:
        import pyarrow as pa

        self._sink: Any = pa.OSFile(str(path), "wb") if path is not None else stream
        self._owns = path is not None
        self._header = True

    def write(self, batch: pa.RecordBatch) -> None:
        import pyarrow.csv as pacsv

        batch = _flat_for_csv(batch)
        quote_header = self._header and any(_needs_quotes_text(n) for n in batch.schema.names)
        options = pacsv.WriteOptions(
            include_header=self._header,
            quoting_style="needed" if _needs_quotes(batch) else "none",
            quoting_header="needed" if quote_header else "none")
        if self._owns:
            pacsv.write_csv(batch, self._sink, options)
        else:
            # A Python stream (stdout): pyarrow would close it when done with it.
            buffer = io.BytesIO()
            pacsv.write_csv(batch, buffer, options)
            self._sink.write(buffer.getvalue())
            self._sink.flush()
        self._header = False

    def close(self) -> None:
        if self._owns:
            self._sink.close()
        else:
            self._sink.flush()


def _flat_for_csv(batch: pa.RecordBatch) -> pa.RecordBatch:
    """The batch with each list, struct or map column (a model answering a vector or a dict
    per row) as JSON text: CSV has no nested values and pyarrow's CSV writer refuses them."""
    import pyarrow as pa

    if not any(pa.types.is_nested(f.type) for f in batch.schema):
        return batch
    columns = []
    for column in batch.columns:
        if pa.types.is_nested(column.type):
            column = pa.array([None if v is None else json.dumps(_finite(v), default=_json_value,
                                                                ensure_ascii=False)
                               for v in column.to_pylist()], pa.string())
        columns.append(column)
    return pa.RecordBatch.from_arrays(columns, names=batch.schema.names)


def _needs_quotes_text(text: str) -> bool:
    return any(c in text for c in ',"\r\n') or text != text.strip() or text == ""


def _needs_quotes(batch: pa.RecordBatch) -> bool:
    import pyarrow as pa
    import pyarrow.compute as pc

    for column in batch.columns:
        if _is_text(column.type) or pa.types.is_binary(column.type):
            if not _is_text(column.type):
                return True
            if pc.any(pc.match_substring_regex(column, r'[,"\r\n]')).as_py():
                return True
        elif not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type)
                  or pa.types.is_boolean(column.type) or pa.types.is_null(column.type)):
            return True  # dates, lists, ...: let pyarrow decide
    return False


class _JsonlWriter(_Writer):
    """One JSON object a line; NaN and infinities (no JSON for them) and nulls as null."""

    def __init__(self, path: Path | None, stream: BinaryIO | None) -> None:
        # Owned until close(): the sink lives across many writes.
        self._sink: Any = open(path, "wb") if path is not None else stream  # noqa: SIM115
        self._owns = path is not None

    def write(self, batch: pa.RecordBatch) -> None:
        self._sink.write(jsonl_bytes(batch))
        self._sink.flush()

    def close(self) -> None:
        if self._owns:
            self._sink.close()
        else:
            self._sink.flush()


def jsonl_bytes(batch: pa.RecordBatch) -> bytes:
    """The batch as JSON lines, values JSON-typed."""
    import pyarrow as pa
    import pyarrow.compute as pc

    columns = []
    for column in batch.columns:
        if pa.types.is_floating(column.type):
            column = pc.if_else(pc.is_finite(column), column, pa.scalar(None, column.type))
        columns.append(column)
    rows = pa.RecordBatch.from_arrays(columns, names=batch.schema.names).to_pylist()
    out = io.StringIO()
    for row in rows:
        try:
            text = json.dumps(row, default=_json_value, allow_nan=False, ensure_ascii=False)
        except ValueError:  # NaN inside a list or struct
            text = json.dumps(_finite(row), default=_json_value, ensure_ascii=False)
        out.write(text)
        out.write("\n")
    return out.getvalue().encode("utf-8")


def _json_value(value: Any) -> Any:
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    return str(value)


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if value == value and value not in (float("inf"), float("-inf")) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


__all__ = [
    "Batch",
    "InputFile",
    "InputSet",
    "OutputSink",
    "OutputSummary",
    "check_output",
    "jsonl_bytes",
    "open_input",
    "open_output",
]
