"""Score's inputs and outputs (core/score/tables.py) on real files: every input format and
folders of them, stdin, the signature's types applied while other columns pass through as
text, every bad input named by file, row and column, outputs written to a temporary name and
renamed at commit, and memory bounded by a batch on a generated multi-million-row CSV.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from amlpromote.core.errors import BadInput, NotFound
from amlpromote.core.score.tables import (
    MARKER,
    InputSet,
    OutputSummary,
    check_output,
    open_input,
    open_output,
)

HEART = Path(__file__).resolve().parents[1] / "examples" / "heart"
HEART_TYPES = {"age": pa.int64(), "sex": pa.int64(), "cp": pa.int64(), "trestbps": pa.int64(),
               "chol": pa.int64(), "fbs": pa.int64(), "restecg": pa.int64(),
               "thalach": pa.int64(), "exang": pa.int64(), "oldpeak": pa.float64(),
               "slope": pa.int64(), "ca": pa.int64(), "thal": pa.string()}


def _lf_heart(tmp_path: Path, name: str = "heart.csv") -> Path:
    """heart.csv with LF line ends (the example has CRLF; outputs are written with LF)."""
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    text = (HEART / "heart.csv").read_bytes().replace(b"\r\n", b"\n")
    path.write_bytes(text if text.endswith(b"\n") else text + b"\n")
    return path


def _read_all(inputs: InputSet, rows: int = 65_536) -> pa.Table:
    return pa.Table.from_batches([b.data for b in inputs.batches(rows)], schema=inputs.schema)


def _copy(inputs: InputSet, spec: str, format: str | None = None) -> OutputSummary:
    with open_output(spec, inputs, format=format) as out:
        for batch in inputs.batches(50):
            out.write(batch.file, batch.data)
        return out.commit()


# --- inputs ---------------------------------------------------------------------------------


def test_csv_types_applied_and_other_columns_pass_through_as_text(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_text("x,when,code,note\n1,2024-01-02,007,\"a, b\"\n2.5,2024-02-03,010,  pad\n")
    inputs = open_input(str(path), {"x": pa.float64(), "when": pa.string()})
    table = _read_all(inputs)
    assert inputs.schema == pa.schema([("x", pa.float64()), ("when", pa.string()),
                                       ("code", pa.string()), ("note", pa.string())])
    assert table.column("x").to_pylist() == [1.0, 2.5]
    assert table.column("when").to_pylist() == ["2024-01-02", "2024-02-03"]  # not a date
    assert table.column("code").to_pylist() == ["007", "010"]  # not 7
    assert table.column("note").to_pylist() == ["a, b", "  pad"]


def test_csv_without_types_infers_but_never_dates(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_text("n,f,d,t,empty\n1,1.5,2024-01-02,2024-01-02 10:00:00,\n2,2,2024-01-03,"
                    "2024-01-02 11:00:00,\n")
    inputs = open_input(str(path))
    assert [f.type for f in inputs.schema] == [pa.int64(), pa.float64(), pa.string(),
                                               pa.string(), pa.string()]
    assert _read_all(inputs).column("d").to_pylist() == ["2024-01-02", "2024-01-03"]


def test_csv_missing_value_words_and_spaces_in_typed_columns(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_text("a,b\n1,x\n,NA\n 3 ,\nNA,y\n5, NA\n6,<NA>\n")
    table = _read_all(open_input(str(path), {"a": pa.int64()}))
    assert table.column("a").to_pylist() == [1, None, 3, None, 5, 6]
    # In text columns a missing-value word is missing too, as pandas.read_csv (and so
    # `mlflow models predict`) reads it; other text, spaces included, stays as it was.
    assert table.column("b").to_pylist() == ["x", None, None, "y", " NA", None]


def test_heart_csv_batches_have_exact_sizes_and_row_ranges() -> None:
    inputs = open_input(str(HEART / "heart.csv"), HEART_TYPES)
    batches = list(inputs.batches(100))
    assert [(b.first_row, b.rows) for b in batches] == [(0, 100), (100, 100), (200, 100),
                                                          (300, 3)]
    assert batches[1].describe() == f"rows 101-200 of {HEART / 'heart.csv'}"
    assert all(b.data.schema == inputs.schema for b in batches)
    assert batches[0].data.column("age")[0].as_py() == 63
    assert inputs.schema.field("target").type == pa.string()  # not in the signature


def test_csv_to_csv_passes_every_byte_through(tmp_path: Path) -> None:
    source = _lf_heart(tmp_path / "in")
    inputs = open_input(str(source), {"age": pa.int64()})
    summary = _copy(inputs, str(tmp_path / "out.csv"))
    assert (tmp_path / "out.csv").read_bytes() == source.read_bytes()
    assert summary.rows == 303 and summary.files == 1


def test_csv_output_quotes_only_values_that_need_it(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_text('a,b\n1,"x, y"\n2,"say ""hi"""\n3,plain\n')
    inputs = open_input(str(path), {"a": pa.int64()})
    _copy(inputs, str(tmp_path / "out.csv"))
    again = pacsv.read_csv(tmp_path / "out.csv")
    assert again.column("b").to_pylist() == ["x, y", 'say "hi"', "plain"]


def test_parquet_in_keeps_file_types_and_out(tmp_path: Path) -> None:
    table = pa.table({"a": pa.array([1, 2, 3], pa.int32()), "b": ["x", "y", "z"]})
    pq.write_table(table, tmp_path / "in.parquet", row_group_size=2)
    inputs = open_input(str(tmp_path / "in.parquet"), {"a": pa.float64()})
    assert inputs.schema.field("a").type == pa.int32()  # parquet is never converted
    assert _read_all(inputs, 2).to_pylist() == table.to_pylist()
    _copy(inputs, str(tmp_path / "out.pq"))
    assert pq.read_table(tmp_path / "out.pq").to_pylist() == table.to_pylist()


def test_jsonl_in_with_types(tmp_path: Path) -> None:
    path = tmp_path / "in.ndjson"
    path.write_text('{"x": 1, "y": "a"}\n{"x": 2.5, "y": null}\n{"y": "c", "x": 3}\n')
    inputs = open_input(str(path), {"x": pa.float64()})
    assert _read_all(inputs).to_pylist() == [{"x": 1.0, "y": "a"}, {"x": 2.5, "y": None},
                                             {"x": 3.0, "y": "c"}]
    _copy(inputs, str(tmp_path / "out.jsonl"))
    assert (tmp_path / "out.jsonl").read_text() == \
        '{"x": 1.0, "y": "a"}\n{"x": 2.5, "y": null}\n{"x": 3.0, "y": "c"}\n'
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text('{"x": 1}\n{"x": "two"}\n')
    assert _bad(str(mixed), {"x": pa.float64()}) == \
        f"{mixed} row 2: column 'x' has a string where earlier rows have a number"


def test_jsonl_stdout_values_json_typed_nan_as_null(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_text("x,y\n1.5,a\nNaN,b\n")
    inputs = open_input(str(path), {"x": pa.float64()})
    stdout = io.BytesIO()
    with open_output("-", inputs, stdout=stdout) as out:
        for batch in inputs.batches():
            extra = batch.data.append_column("prediction", pa.array([True, False]))
            out.write(batch.file, extra)
        summary = out.commit()
    lines = [json.loads(line) for line in stdout.getvalue().decode().splitlines()]
    assert lines == [{"x": 1.5, "y": "a", "prediction": True},
                     {"x": None, "y": "b", "prediction": False}]
    assert summary.location == "-" and summary.rows == 2


def test_stdin_csv_streams(tmp_path: Path) -> None:
    data = (HEART / "heart-unlabeled-0.csv").read_bytes()
    inputs = open_input("-", HEART_TYPES, stdin=io.BytesIO(data))
    assert inputs.files[0].name == "-" and inputs.files[0].path is None
    table = _read_all(inputs, 30)
    assert table.num_rows == 100
    expected = pacsv.read_csv(HEART / "heart-unlabeled-0.csv")
    assert table.column("chol").to_pylist() == expected.column("chol").to_pylist()
    with pytest.raises(RuntimeError):
        list(inputs.batches())  # standard input is read once


def test_stdin_without_types_infers_from_a_sample_and_reads_it_again() -> None:
    data = b"a,b\n" + b"".join(b"%d,t%d\n" % (i, i) for i in range(100_000))
    inputs = open_input("-", None, stdin=io.BytesIO(data))
    table = _read_all(inputs)
    assert inputs.schema.field("a").type == pa.int64()
    assert table.column("a").to_pylist() == list(range(100_000))


def test_folder_of_mixed_formats_sorted_with_markers_skipped(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    (folder / "sub").mkdir(parents=True)
    (folder / "b.csv").write_text("a,b\n3,z\n")
    (folder / "a.csv").write_text("b,a\ny,2\n")  # same columns, another order
    pq.write_table(pa.table({"a": [4], "b": ["w"]}), folder / "sub" / "c.parquet")
    (folder / "_SUCCESS").write_text("")
    (folder / ".a.csv.crc").write_text("junk")
    (folder / "_temporary").mkdir()
    (folder / "_temporary" / "x.csv").write_text("junk\n")
    inputs = open_input(str(folder), {"a": pa.int64()})
    assert [f.name for f in inputs.files] == [os.path.join(str(folder), p) for p in
                                              ("a.csv", "b.csv", "sub/c.parquet")]
    assert inputs.folder == folder
    assert _read_all(inputs).to_pylist() == [{"a": 2, "b": "y"}, {"a": 3, "b": "z"},
                                             {"a": 4, "b": "w"}]


def test_batches_never_span_two_files(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    for i in range(2):
        (folder / f"p{i}.csv").write_text("a\n" + "".join(f"{j}\n" for j in range(5)))
    batches = list(open_input(str(folder)).batches(3))
    assert [(b.file.name[-6:], b.first_row, b.rows) for b in batches] == [
        ("p0.csv", 0, 3), ("p0.csv", 3, 2), ("p1.csv", 0, 3), ("p1.csv", 3, 2)]


def test_header_only_csv_gives_no_batches_and_the_header(tmp_path: Path) -> None:
    (tmp_path / "h.csv").write_text("a,b\n")
    inputs = open_input(str(tmp_path / "h.csv"), {"a": pa.int64()})
    assert inputs.schema.names == ["a", "b"] and list(inputs.batches()) == []
    summary = _copy(inputs, str(tmp_path / "out.csv"))
    assert (tmp_path / "out.csv").read_text() == "a,b\n"
    assert summary.rows == 0


# --- bad inputs -----------------------------------------------------------------------------


def _bad(spec: str, types: dict[str, pa.DataType] | None = None) -> str:
    with pytest.raises(BadInput) as caught:
        inputs = open_input(spec, types)
        for _ in inputs.batches(1000):
            pass
    assert caught.value.hint
    assert "\n" not in caught.value.message
    return caught.value.message


def test_bad_value_names_file_row_column_and_value(tmp_path: Path) -> None:
    source = _lf_heart(tmp_path)
    lines = source.read_text().splitlines()
    lines[150] = "abc" + lines[150][lines[150].index(","):]  # data row 150
    source.write_text("\n".join(lines) + "\n")
    message = _bad(str(source), HEART_TYPES)
    assert message == f"{source} row 150: column 'age' value 'abc' is not a long"


def test_two_bad_columns_of_a_batch_are_named_together(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_text("a,b,c\n1,2.5,x\n2,oops,y\nseven,3,z\n")
    message = _bad(str(path), {"a": pa.int64(), "b": pa.float64()})
    assert message == (f"{path} row 3: column 'a' value 'seven' is not a long; "
                       "row 2: column 'b' value 'oops' is not a double")


def test_a_number_beyond_a_float_is_an_error_not_infinity(tmp_path: Path) -> None:
    # pyarrow alone reads '1e40' into a float32 column as inf (and so does its JSON reader).
    csv = tmp_path / "in.csv"
    csv.write_text("f\n1.5\n3.4e38\n-1e40\n")
    assert _bad(str(csv), {"f": pa.float32()}) == \
        f"{csv} row 3: column 'f' value '-1e40' is beyond a float's range (about ±3.4e38)"
    jsonl = tmp_path / "in.jsonl"
    jsonl.write_text('{"f": 1}\n{"f": 1.5}\n{"f": 1e40}\n')
    assert _bad(str(jsonl), {"f": pa.float32()}) == \
        f"{jsonl} row 3: column 'f' value 1e+40 is beyond a float's range (about ±3.4e38)"
    # In range, infinity words and missing values read as before.
    csv.write_text("f\n1.5\ninf\nNA\n-3.4e38\n")
    table = _read_all(open_input(str(csv), {"f": pa.float32()}))
    assert table.schema.field("f").type == pa.float32()
    values = table.column("f").to_pylist()
    assert values[:3] == [1.5, float("inf"), None] and values[3] == pytest.approx(-3.4e38)
    jsonl.write_text('{"f": 1}\n{"f": 1.5}\n')
    assert _read_all(open_input(str(jsonl), {"f": pa.float32()})).column("f").to_pylist() == \
        [1.0, 1.5]


def test_bad_value_in_a_later_block_counts_rows_across_blocks(tmp_path: Path) -> None:
    path = tmp_path / "big.csv"
    rows = [f"{i},{i}" for i in range(300_000)]
    rows[250_000] = "250000,x"
    path.write_text("a,b\n" + "\n".join(rows) + "\n")
    assert _bad(str(path), {"b": pa.int64()}) == \
        f"{path} row 250,001: column 'b' value 'x' is not a long"


def test_ragged_row_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "ragged.csv"
    path.write_text("a,b\n" + "1,2\n" * 200_000 + "3,4,5\n")
    assert _bad(str(path)) == f"{path} line 200,002: expected 2 fields (as the header), got 3"
    short = tmp_path / "short.csv"
    short.write_text("a,b\n1,2\n3\n")
    assert _bad(str(short)) == f"{short} line 3: expected 2 fields (as the header), got 1"


def test_fake_parquet_zero_byte_csv_unknown_extension(tmp_path: Path) -> None:
    fake = tmp_path / "fake.parquet"
    fake.write_text("a,b\n1,2\n")
    assert _bad(str(fake)).startswith(f"{fake}: not a parquet file")
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    assert _bad(str(empty)).startswith(f"{empty}: the file is empty")
    text = tmp_path / "notes.txt"
    text.write_text("x")
    assert "not a CSV, parquet or JSON-lines file" in _bad(str(text))
    bad_json = tmp_path / "x.jsonl"
    bad_json.write_text('{"a": 1}\nnot json\n')
    assert _bad(str(bad_json)).startswith(f"{bad_json} row 2: not a JSON object")


def test_an_endpoint_request_document_is_named_as_such(tmp_path: Path) -> None:
    # Azure ML's request file (README's examples/heart/request.json) and MLflow serving's
    # shapes, pretty-printed or on one line: not rows, and the hint names the command for it.
    split = {"columns": ["age", "thal"], "index": [0, 1], "data": [[63, "fixed"], [67, "x"]]}
    for name, document, indent in [("pretty.json", {"input_data": split}, 1),
                                   ("line.json", {"dataframe_split": split}, None),
                                   ("records.jsonl", {"dataframe_records": [{"age": 1}]}, None),
                                   ("tensor.json", {"inputs": [[1.0, 2.0]]}, None)]:
        path = tmp_path / name
        path.write_text(json.dumps(document, indent=indent))
        message = _bad(str(path))
        assert message == f"{path} is an endpoint request (one JSON document with the rows " \
            "inside), not rows", message
    # Rows whose only column is named like a request key are rows.
    rows = tmp_path / "prompts.jsonl"
    rows.write_text('{"inputs": "a"}\n{"inputs": "b"}\n')
    assert _read_all(open_input(str(rows))).column("inputs").to_pylist() == ["a", "b"]


def test_missing_path_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="no such file or folder"):
        open_input(str(tmp_path / "nope.csv"))


def test_empty_folder_and_folder_without_data_files(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert "no CSV, parquet or JSON-lines files" in _bad(str(tmp_path / "empty"))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "readme.md").write_text("x")
    assert "(it has readme.md)" in _bad(str(tmp_path / "other"))


def test_mixed_schema_folder_names_the_file_and_how(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "a.csv").write_text("x,y\n1,2\n")
    (folder / "b.csv").write_text("x,z\n1,2\n")
    message = _bad(str(folder))
    assert message == (f"{folder / 'b.csv'} does not have the columns of {folder / 'a.csv'}: "
                       "no column 'y'; extra column 'z'")
    other = tmp_path / "pq"
    other.mkdir()
    pq.write_table(pa.table({"x": pa.array([1], pa.int64())}), other / "a.parquet")
    pq.write_table(pa.table({"x": pa.array([1.5], pa.float64())}), other / "b.parquet")
    assert _bad(str(other)) == (f"{other / 'b.parquet'}: column 'x' is double, int64 in "
                                f"{other / 'a.parquet'}")


def test_a_later_csv_file_is_converted_to_the_first_files_types(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "a.csv").write_text("x\n1\n")
    (folder / "b.csv").write_text("x\n2\nnope\n")
    assert _bad(str(folder)) == f"{folder / 'b.csv'} row 2: column 'x' value 'nope' is not a long"


# --- outputs --------------------------------------------------------------------------------


def test_no_final_file_until_commit_then_renamed(tmp_path: Path) -> None:
    inputs = open_input(str(_lf_heart(tmp_path / "in")), HEART_TYPES)
    final = tmp_path / "out" / "scored.parquet"
    out = open_output(str(final), inputs)
    for batch in inputs.batches(100):
        out.write(batch.file, batch.data)
        assert not final.exists()
        temps = list(final.parent.iterdir())
        assert len(temps) == 1 and temps[0].name.startswith(".scored.parquet.partial-")
    summary = out.commit()
    assert [p.name for p in final.parent.iterdir()] == ["scored.parquet"]
    assert pq.read_table(final).num_rows == 303 == summary.rows
    assert summary.location == str(final) and summary.paths == [str(final)]


def test_abort_leaves_nothing_and_is_idempotent(tmp_path: Path) -> None:
    inputs = open_input(str(_lf_heart(tmp_path / "in")))
    with pytest.raises(KeyboardInterrupt), open_output(str(tmp_path / "o.csv"), inputs) as out:
        for batch in inputs.batches(100):
            out.write(batch.file, batch.data)
            raise KeyboardInterrupt
    assert list(tmp_path.glob("*o.csv*")) == []
    assert out.abort() is None  # again: nothing to do
    with pytest.raises(RuntimeError):
        out.write(inputs.files[0], _read_all(inputs))


def test_abort_removes_the_folders_it_created_and_only_those(tmp_path: Path) -> None:
    inputs = open_input(str(_lf_heart(tmp_path / "in")))
    (tmp_path / "existing").mkdir()
    final = tmp_path / "existing" / "new" / "deeper" / "o.csv"
    with pytest.raises(KeyboardInterrupt), open_output(str(final), inputs) as out:
        assert final.parent.is_dir()  # created at open, so writing can start
        out.write(inputs.files[0], next(inputs.batches(100)).data)
        raise KeyboardInterrupt
    assert [p.name for p in (tmp_path / "existing").iterdir()] == []  # it was there before
    # A kept partial output keeps the folders that hold it.
    out = open_output(str(final), inputs, keep_partial=True)
    out.write(inputs.files[0], next(inputs.batches(100)).data)
    kept = out.abort()
    assert kept is not None and Path(kept.location).parent == final.parent


def test_keep_partial_leaves_a_readable_partial(tmp_path: Path) -> None:
    inputs = open_input(str(_lf_heart(tmp_path / "in")), HEART_TYPES)
    out = open_output(str(tmp_path / "o.parquet"), inputs, keep_partial=True)
    batches = inputs.batches(100)
    out.write(inputs.files[0], next(batches).data)
    kept = out.abort()
    assert kept is not None and kept.location == str(tmp_path / "o.parquet.partial")
    assert not (tmp_path / "o.parquet").exists()
    assert pq.read_table(tmp_path / "o.parquet.partial").num_rows == 100
    assert out.abort() is kept


def test_existing_output_file_is_replaced_at_commit(tmp_path: Path) -> None:
    inputs = open_input(str(_lf_heart(tmp_path / "in")))
    (tmp_path / "o.csv").write_text("old\n")
    out = open_output(str(tmp_path / "o.csv"), inputs)
    out.write(inputs.files[0], next(inputs.batches(5)).data)
    assert (tmp_path / "o.csv").read_text() == "old\n"
    out.commit()
    assert pacsv.read_csv(tmp_path / "o.csv").num_rows == 5


def _folder_input(tmp_path: Path) -> InputSet:
    folder = tmp_path / "data"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.csv").write_text("x,y\n1,a\n2,b\n")
    (folder / "sub" / "b.jsonl").write_text('{"x": 3, "y": "c"}\n')
    pq.write_table(pa.table({"x": [4], "y": ["d"]}), folder / "c.parquet")
    (folder / "e.csv").write_text("x,y\n")
    return open_input(str(folder), {"x": pa.int64()})


def test_folder_out_mirrors_files_and_replaces_its_own_folder(tmp_path: Path) -> None:
    inputs = _folder_input(tmp_path)
    out_dir = tmp_path / "scored"
    summary = _copy(inputs, str(out_dir))
    written = sorted(p.relative_to(out_dir).as_posix() for p in out_dir.rglob("*") if p.is_file())
    assert written == [MARKER, "a.csv", "c.parquet", "e.csv", "sub/b.csv"]
    assert (out_dir / "sub" / "b.csv").read_text() == "x,y\n3,c\n"
    assert (out_dir / "e.csv").read_text() == "x,y\n"  # an empty input, an empty output
    assert pq.read_table(out_dir / "c.parquet").to_pylist() == [{"x": 4, "y": "d"}]
    marker = json.loads((out_dir / MARKER).read_text())
    assert marker["rows"] == 4 and marker["files"] == 4 and marker["time"]
    assert summary.files == 4 and summary.location == str(out_dir)
    # Ours: replaced whole (a stale file goes); forced format.
    (out_dir / "stale.csv").write_text("x\n")
    _copy(inputs, str(out_dir), format="parquet")
    names = sorted(p.name for p in out_dir.rglob("*") if p.is_file())
    assert names == sorted([MARKER, "a.parquet", "c.parquet", "e.parquet", "b.parquet"])
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_folder_input_to_one_file_in_order(tmp_path: Path) -> None:
    inputs = _folder_input(tmp_path)
    _copy(inputs, str(tmp_path / "all.csv"))
    assert (tmp_path / "all.csv").read_text() == "x,y\n1,a\n2,b\n4,d\n3,c\n"


def test_foreign_folder_and_bad_outputs_are_refused_before_writing(tmp_path: Path) -> None:
    inputs = _folder_input(tmp_path)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.txt").write_text("precious")
    with pytest.raises(BadInput, match="exists and was not written by amlpromote score; "
                                       "remove it or choose another --output"):
        check_output(str(foreign), inputs)
    with pytest.raises(BadInput, match="inside the input folder"):
        check_output(str(tmp_path / "data" / "out"), inputs)
    with pytest.raises(BadInput, match="contains the input folder"):
        check_output(str(tmp_path), inputs)
    single = open_input(str(_lf_heart(tmp_path / "in")))
    with pytest.raises(BadInput, match="is the input file"):
        check_output(str(tmp_path / "in" / "heart.csv"), single)
    with pytest.raises(BadInput, match=r"not a \.csv, \.parquet or \.jsonl file name"):
        check_output(str(tmp_path / "out"), single)
    with pytest.raises(BadInput, match="cannot be written to standard output"):
        check_output("-", single, format="parquet")
    with pytest.raises(BadInput, match="is a folder"):
        check_output(str(foreign), single, format="csv")
    assert (foreign / "thesis.txt").read_text() == "precious"
    assert not (tmp_path / "data" / "out").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_colliding_folder_outputs_are_refused(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "a.csv").write_text("x\n1\n")
    (folder / "a.jsonl").write_text('{"x": 2}\n')
    with pytest.raises(BadInput, match=r"would both be written to a\.csv"):
        check_output(str(tmp_path / "out"), open_input(str(folder)))


def test_a_table_with_another_schema_is_a_bug(tmp_path: Path) -> None:
    inputs = open_input(str(_lf_heart(tmp_path / "in")))
    with open_output(str(tmp_path / "o.parquet"), inputs) as out:
        batches = inputs.batches(10)
        out.write(inputs.files[0], next(batches).data)
        with pytest.raises(RuntimeError, match="another schema"):
            out.write(inputs.files[0], next(batches).data.drop_columns(["age"]))
    assert not (tmp_path / "o.parquet").exists()


# --- memory ---------------------------------------------------------------------------------


_MEMORY_SCRIPT = """
import json, resource, sys, pyarrow as pa
from amlpromote.core.score.tables import open_input, open_output
types = {"age": pa.int64(), "oldpeak": pa.float64(), "chol": pa.int64()}
inputs = open_input(sys.argv[1], types)
rows = 0
with open_output(sys.argv[2], inputs) as out:
    for batch in inputs.batches():
        out.write(batch.file, batch.data)
        rows += batch.rows
    out.commit()
print(json.dumps({"rows": rows, "pool": pa.default_memory_pool().max_memory(),
                  "rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""


def _score_in_a_fresh_process(source: Path, output: Path) -> dict[str, int]:
    done = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT, str(source), str(output)],
                          capture_output=True, text=True, check=True, timeout=300)
    report: dict[str, int] = json.loads(done.stdout)
    return report


def test_memory_stays_bounded_by_the_batch_on_a_2m_row_csv(tmp_path: Path) -> None:
    """2M rows (~90 MB) read and written as parquet in a fresh process: the arrow pool's peak
    stays far below the file size, and is the same as for under a third of the rows."""
    heart = pacsv.read_csv(HEART / "heart.csv")
    sizes = {}
    for name, rows in (("small.csv", 600_000), ("big.csv", 2_000_000)):
        with pacsv.CSVWriter(tmp_path / name, heart.schema) as writer:
            for _ in range(rows // heart.num_rows + 1):
                writer.write_table(heart)  # in chunks: the test itself stays small too
        sizes[name] = (tmp_path / name).stat().st_size
    assert sizes["big.csv"] > 80_000_000
    small = _score_in_a_fresh_process(tmp_path / "small.csv", tmp_path / "small.parquet")
    big = _score_in_a_fresh_process(tmp_path / "big.csv", tmp_path / "big.parquet")
    assert big["rows"] == (2_000_000 // heart.num_rows + 1) * heart.num_rows
    assert pq.ParquetFile(tmp_path / "big.parquet").metadata.num_rows == big["rows"]
    assert big["pool"] < sizes["big.csv"] / 2, (big, sizes)
    assert big["pool"] < small["pool"] * 1.3 + 4_000_000, (big, small)
    assert big["rss"] - small["rss"] < sizes["big.csv"] / 8, (big, small)
