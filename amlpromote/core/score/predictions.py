"""A model's answer for a batch of rows, as named arrow columns.

The same names whatever scored the rows, so an output file does not change shape between
engines: one output is the prediction column (`prediction`, or the `--prediction-column` name);
a data frame or dict of outputs gives `{prediction}_{name}` per output; a 2-D array gives
`{prediction}_{i}`. An online endpoint answers a data frame in records orientation (a list of
dicts, Azure ML's MLflow scoring script) and a 2-D array as lists, which map to the same names.
A data frame of one column is one output, like a Series.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from amlpromote.core.errors import BadInput, OperationFailed

if TYPE_CHECKING:
    import pyarrow as pa


def _as_array(values: Any) -> pa.Array:
    import pyarrow as pa

    try:
        return pa.array(values, from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        # Mixed kinds in one output (a model answering numbers and text): kept as JSON text.
        listed = values.tolist() if hasattr(values, "tolist") else list(values)
        return pa.array([None if v is None else json.dumps(v, default=str) for v in listed],
                        pa.string())


def _named(base: str, names: list[Any], columns: list[Any]) -> list[tuple[str, Any]]:
    if len(columns) == 1:
        return [(base, columns[0])]
    return [(f"{base}_{name}", column) for name, column in zip(names, columns, strict=True)]


def prediction_columns(raw: Any, rows: int, base: str, where: str) -> list[tuple[str, pa.Array]]:
    """(name, column) pairs for a model's or an endpoint's answer to `rows` rows;
    OperationFailed when the answer does not hold one prediction per row."""
    import numpy as np
    import pandas as pd

    pairs: list[tuple[str, Any]]
    if isinstance(raw, pd.DataFrame):
        pairs = _named(base, list(raw.columns), [raw[c].to_numpy() for c in raw.columns])
    elif isinstance(raw, pd.Series):
        pairs = [(base, raw.to_numpy())]
    elif isinstance(raw, dict):  # named outputs, each an array of one value per row
        # A scalar is one value (a model answering {"score": 0.7} for one row).
        pairs = _named(base, list(raw), [np.asarray(v).reshape(-1) if np.ndim(v) == 0
                                         else np.asarray(v) for v in raw.values()])
    else:
        if isinstance(raw, np.ndarray):
            array = raw
        elif isinstance(raw, list | tuple):
            if raw and all(isinstance(item, dict) for item in raw):
                names = list(dict.fromkeys(k for item in raw for k in item))
                pairs = _named(base, names, [[item.get(n) for item in raw] for n in names])
                return _checked(pairs, rows, where)
            array = np.asarray(raw, dtype=object) if _ragged(raw) else np.asarray(raw)
        else:
            raise OperationFailed(f"the model answered {type(raw).__name__} for {where}, not "
                                  "one prediction per row")
        if array.ndim == 2 and array.dtype != object:
            pairs = _named(base, list(range(array.shape[1])),
                           [array[:, i] for i in range(array.shape[1])])
        elif array.ndim <= 1 or array.dtype == object:
            pairs = [(base, array.reshape(-1) if array.ndim == 0 else array)]
        else:  # 3-D and more: one list value per row
            pairs = [(base, [item.tolist() for item in array])]
    return _checked(pairs, rows, where)


def _ragged(items: Any) -> bool:
    lengths = {len(i) if isinstance(i, list | tuple) else -1 for i in items}
    return len(lengths) > 1


def _checked(pairs: list[tuple[str, Any]], rows: int, where: str) -> list[tuple[str, pa.Array]]:
    out = []
    for name, column in pairs:
        if len(column) != rows:
            answered = f"{len(column)} prediction{'s' if len(column) != 1 else ''}"
            raise OperationFailed(f"the model answered {answered} for the {rows} rows of "
                                  f"{where}",
                                  hint="a model must answer one prediction per input row")
        out.append((str(name), _as_array(column)))
    return out


def with_predictions(data: pa.RecordBatch, pairs: list[tuple[str, pa.Array]],
                     id_column: str | None) -> pa.Table:
    """The output rows: the input's columns (or only `id_column`) and then the predictions;
    OperationFailed when a prediction's name is already an input column."""
    import pyarrow as pa

    names = [id_column] if id_column else list(data.schema.names)
    taken = set(names)
    clash = [name for name, _ in pairs if name in taken]
    if clash:
        raise PredictionNameTaken(clash[0])
    columns = [data.column(n) for n in names] + [array for _, array in pairs]
    return pa.Table.from_arrays(columns, names=names + [name for name, _ in pairs])


class PredictionNameTaken(BadInput):
    def __init__(self, name: str) -> None:
        super().__init__(f"the input already has a column '{name}', the name of a prediction "
                         "column", hint="choose another name with --prediction-column, or "
                                        "keep only an id with --id-column")
