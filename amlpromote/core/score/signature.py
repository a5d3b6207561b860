"""A model's signature as scoring needs it: which columns it takes, of which types, and the
check of an input against it before anything is scored or sent.

The signature is read from the MLmodel file itself (YAML whose `signature.inputs` and
`signature.outputs` are JSON strings, as MLflow 1.x and 2.x write them), so the check needs
neither mlflow nor the model's flavor installed. The type rules follow what
`mlflow.pyfunc`'s schema enforcement accepts (mlflow/models/utils.py,
`_enforce_mlflow_datatype`): integers widen to long, ints and floats to double, text is a
string; a float never becomes an integer and a double never a float. Where MLflow takes an
int64 column for a double only when every value is 0 or 1, the check is wider and casts
integers to double (exact below 2**53): the same rows then score the same way on every engine
and through an endpoint, whose JSON would otherwise turn them into ints again.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from amlpromote.core.errors import BadInput

if TYPE_CHECKING:
    import pyarrow as pa

# MLflow's scalar column types (mlflow.types.DataType).
SCALAR_TYPES = ("boolean", "integer", "long", "float", "double", "string", "binary",
                "datetime")


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # one of SCALAR_TYPES, or "array" / "object" / "map" / "any" (not checked)
    required: bool = True


@dataclass
class Signature:
    """The columns a model takes and gives; `inputs` is None when the model has no
    column-based input signature (none at all, or tensors)."""

    inputs: list[Column] | None = None
    outputs: list[Column] | None = None
    kind: str = "none"  # "columns" | "tensors" | "none"
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def scalar_inputs(self) -> dict[str, str]:
        """Input columns of scalar types: name -> MLflow type name."""
        return {c.name: c.type for c in self.inputs or [] if c.type in SCALAR_TYPES}

    @property
    def output_names(self) -> list[str] | None:
        """The named outputs, when the model declares more than one."""
        named = [c.name for c in self.outputs or [] if c.name]
        return named if len(named) > 1 else None


def _columns(text: Any, where: str) -> tuple[list[Column] | None, str]:
    if not text:
        return None, "none"
    try:
        specs = json.loads(text) if isinstance(text, str) else text
    except ValueError:
        raise BadInput(f"the model's MLmodel file has a {where} signature that is not JSON",
                       hint="save the model again with mlflow, or score it without a "
                            "signature by removing the signature section") from None
    if not isinstance(specs, list):
        return None, "none"
    if any(isinstance(s, dict) and s.get("type") == "tensor" for s in specs):
        return None, "tensors"
    columns = []
    for spec in specs:
        if not isinstance(spec, dict):
            continue
        kind = spec.get("type")
        name = spec.get("name")
        # MLflow 2.7-2.9 wrote `optional: true`; later versions `required: false`.
        required = bool(spec.get("required", not spec.get("optional", False)))
        columns.append(Column(str(name) if name is not None else "",
                              kind if isinstance(kind, str) else "any", required))
    if columns and all(c.name for c in columns):
        return columns, "columns"
    # Unnamed columns: the model takes positions, not names, and there is nothing to check.
    return None, "none" if not columns else "tensors"


def parse_mlmodel(text: str) -> Signature:
    """The signature in an MLmodel file's text (no signature: an empty Signature)."""
    import yaml

    try:
        document = yaml.safe_load(text) or {}
    except yaml.YAMLError:
        raise BadInput("the model's MLmodel file is not valid YAML",
                       hint="check that the model folder is an MLflow model") from None
    section = document.get("signature") if isinstance(document, dict) else None
    if not isinstance(section, dict):
        return Signature(notes=["the model has no signature: its input is scored as it is, "
                                "without a column check"])
    inputs, kind = _columns(section.get("inputs"), "input")
    outputs, _ = _columns(section.get("outputs"), "output")
    signature = Signature(inputs, outputs, kind)
    if kind == "tensors":
        signature.notes.append("the model's signature is tensor-based: the columns are passed "
                               "as they are")
    elif kind == "none":
        signature.notes.append("the model has no input signature: its input is scored as it "
                               "is, without a column check")
    return signature


def read_signature(model_dir: Path) -> Signature:
    try:
        text = (model_dir / "MLmodel").read_text()
    except OSError as exc:
        raise BadInput(f"{model_dir} has no readable MLmodel file ({exc.strerror or exc})",
                       hint="pass an MLflow model folder, or a registered version") from None
    return parse_mlmodel(text)


# -- MLflow types and arrow types ------------------------------------------------------------


@functools.cache
def arrow_type(mlflow_type: str) -> pa.DataType:
    """The arrow type a column of this MLflow type is read as (what its pandas dtype is)."""
    import pyarrow as pa

    return {
        "boolean": pa.bool_(), "integer": pa.int32(), "long": pa.int64(),
        "float": pa.float32(), "double": pa.float64(), "string": pa.string(),
        "binary": pa.binary(), "datetime": pa.timestamp("ns"),
    }[mlflow_type]


def arrow_types(signature: Signature) -> dict[str, pa.DataType]:
    return {name: arrow_type(kind) for name, kind in signature.scalar_inputs.items()}


def _accepts(mlflow_type: str, given: pa.DataType) -> bool:
    """Whether a column of arrow type `given` can be cast, losing nothing, to `mlflow_type`
    (range checks on the values happen at the cast)."""
    import pyarrow.types as t

    if t.is_dictionary(given):
        given = given.value_type
    if t.is_null(given):
        return True  # an all-empty column: nulls of any type
    if mlflow_type in ("long", "integer"):
        return t.is_integer(given)
    if mlflow_type == "double":
        return t.is_integer(given) or t.is_floating(given) or t.is_decimal(given)
    if mlflow_type == "float":
        return (t.is_integer(given) and given.bit_width <= 16) or (
            t.is_floating(given) and given.bit_width <= 32)
    if mlflow_type == "boolean":
        return t.is_boolean(given)
    if mlflow_type == "string":
        return t.is_string(given) or t.is_large_string(given)
    if mlflow_type == "binary":
        return t.is_binary(given) or t.is_large_binary(given) or t.is_fixed_size_binary(given)
    if mlflow_type == "datetime":
        return (t.is_timestamp(given) or t.is_date(given) or t.is_string(given)
                or t.is_large_string(given))
    return True


def check_columns(schema: pa.Schema, signature: Signature, where: str) -> None:
    """Every problem of the input's columns against the signature, in one BadInput (exit 2),
    before anything is scored: missing required columns, then incompatible types."""
    if signature.inputs is None:
        return
    present = {field.name: field.type for field in schema}
    missing = [c.name for c in signature.inputs if c.required and c.name not in present]
    wrong = [f"'{c.name}' is {present[c.name]}, the model takes {c.type}"
             for c in signature.inputs
             if c.name in present and c.type in SCALAR_TYPES
             and not _accepts(c.type, present[c.name])]
    problems = []
    if missing:
        problems.append("missing column" + ("s " if len(missing) > 1 else " ")
                        + ", ".join(f"'{m}'" for m in missing))
    if wrong:
        problems.append("column " + "; ".join(wrong))
    if problems:
        raise BadInput(f"{where} does not fit the model's signature: " + "; ".join(problems),
                       hint="amlpromote models show NAME/VERSION lists the model's input "
                            "columns; extra columns are fine")


def conform(batch: pa.RecordBatch, signature: Signature, where: str) -> pa.RecordBatch:
    """The batch with the signature's columns cast to the types the model takes (a no-op for
    columns that already are); a value that does not fit (an int64 beyond int32, a fraction in
    an integer column) is BadInput naming the rows and the column."""
    import pyarrow as pa
    import pyarrow.compute as pc

    wanted = arrow_types(signature)
    if not wanted:
        return batch
    arrays = list(batch.columns)
    changed = False
    for index, field in enumerate(batch.schema):
        target = wanted.get(field.name)
        if target is None or field.type == target:
            continue
        if signature.scalar_inputs[field.name] == "datetime" and pa.types.is_timestamp(
                field.type):
            continue  # any precision is a datetime (MLflow ignores it too)
        try:
            arrays[index] = pc.cast(arrays[index], target, safe=True)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise BadInput(f"{where}: column '{field.name}' does not fit the model's "
                           f"{signature.scalar_inputs[field.name]} input ({first})",
                           hint="fix the values, or check the column against the model's "
                                "signature (amlpromote models show NAME/VERSION)") from None
        changed = True
    if not changed:
        return batch
    fields = [pa.field(f.name, a.type) for f, a in zip(batch.schema, arrays, strict=True)]
    return pa.RecordBatch.from_arrays(arrays, schema=pa.schema(fields))
