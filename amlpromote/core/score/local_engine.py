"""The local engine: mlflow.pyfunc over an input's record batches, in this process or in
worker processes that each load the model once.

Batches go to the workers in order, at most two per worker in flight, and come back in order,
so memory is bounded by the batch size times the workers, never by the input. Each worker turns
its batch into the pandas frame `mlflow.pyfunc` takes (`RecordBatch.to_pandas`) and calls the
model's `predict`, so its predictions are `mlflow.pyfunc.load_model(...).predict` on those rows.
Workers are started with `spawn` (the parent has pyarrow's threads running; a forked child
would inherit their locks) and ignore SIGINT: Ctrl-C and SIGTERM reach the parent, which
terminates them.
"""

from __future__ import annotations

import collections
import logging
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from amlpromote.core.errors import OperationFailed
from amlpromote.core.score import predictions
from amlpromote.core.score.signature import Signature, conform

if TYPE_CHECKING:
    import pyarrow as pa

    from amlpromote.core.score.tables import Batch, OutputSink

# The models loaded in this process (a worker's, or the CLI's own with one worker), by folder.
_MODELS: dict[str, Any] = {}


class _ExtraColumnsNote(logging.Filter):
    """Drops MLflow's per-call warning about input columns outside the signature: extra
    columns pass through by design, and a warning per batch would flood the log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Found extra inputs in the model input")


@dataclass
class Scored:
    rows: int
    batches: int
    seconds: float


class _LoadFailed(Exception):
    pass


def _load(model_dir: str) -> Any:
    if model_dir not in _MODELS:
        import mlflow.pyfunc

        logger = logging.getLogger("mlflow.models.utils")
        if not any(isinstance(f, _ExtraColumnsNote) for f in logger.filters):
            logger.addFilter(_ExtraColumnsNote())
        try:
            _MODELS[model_dir] = mlflow.pyfunc.load_model(model_dir)
        except Exception as exc:
            from amlpromote.core.deploy.local.server import explain_load_failure

            raise _LoadFailed(explain_load_failure(exc, Path(model_dir))) from None
    return _MODELS[model_dir]


def _predict(model_dir: str, data: pa.RecordBatch, base: str,
             where: str) -> tuple[str, Any]:
    """One batch's prediction columns, or ("load-failed" | "failed", message): exceptions do
    not cross the process boundary (a model's own exception class may not unpickle)."""
    try:
        model = _load(model_dir)
    except _LoadFailed as exc:
        return "load-failed", str(exc)
    try:
        raw = model.predict(data.to_pandas())
        return "ok", predictions.prediction_columns(raw, data.num_rows, base, where)
    except OperationFailed as exc:
        return "failed", exc.message
    except Exception as exc:
        return "failed", f"the model failed on {where}: {type(exc).__name__}: {_said(exc)}"


def _said(exc: BaseException) -> str:
    """The line of an exception's message that says what was wrong. MLflow's schema errors
    start with the data frame's repr over several lines ("Failed to enforce schema of data
    '   age ...") and end with the reason ("Error: Incompatible input types for column age"):
    the reason is kept."""
    text = str(exc).strip()
    if "Failed to enforce schema" in text and "Error: " in text:
        text = text.rsplit("Error: ", 1)[1].strip()
    return (text.splitlines() or [""])[0][:300]


def _ignore_sigint() -> None:
    # The parent handles Ctrl-C and terminates the pool; a worker must not die mid-answer
    # with a traceback of its own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def check_loads(model_dir: Path) -> None:
    """Load the model here once (workers=1 scores with it): one line naming the missing or
    mismatched package when it cannot load."""
    try:
        _load(str(model_dir))
    except _LoadFailed as exc:
        raise OperationFailed(str(exc), hint="install the package in this environment (the "
                                             "local engine runs the model here), or score "
                                             "through an endpoint") from None


_DONE = object()


def _read_ahead(items: Iterable[Any], depth: int = 2) -> Iterator[Any]:
    """`items`, produced by a thread of their own up to `depth` ahead: reading and parsing the
    next batch (pyarrow, which releases the GIL) overlaps the model's predict on this one.
    The producer's exception is raised here, at its place in the order."""
    ahead: queue.Queue[Any] = queue.Queue(depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        ahead.put((True, item), timeout=0.2)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            ahead.put((True, _DONE))
        except BaseException as exc:  # handed to the consumer, which raises it
            ahead.put((False, exc))

    thread = threading.Thread(target=produce, name="score-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            ok, item = ahead.get()
            if not ok:
                raise item
            if item is _DONE:
                return
            yield item
    finally:
        stop.set()


def _results(model_dir: Path, batches: Iterable[Batch], signature: Signature, base: str,
             workers: int) -> Iterator[tuple[Batch, tuple[str, Any]]]:
    items = _read_ahead((batch, conform(batch.data, signature, batch.describe()))
                        for batch in batches)
    if workers <= 1:
        for batch, data in items:
            yield batch, _predict(str(model_dir), data, base, batch.describe())
        return
    import multiprocessing

    pool = multiprocessing.get_context("spawn").Pool(workers, initializer=_ignore_sigint)
    try:
        pending: collections.deque[tuple[Batch, Any]] = collections.deque()
        for batch, data in items:
            pending.append((batch, pool.apply_async(
                _predict, (str(model_dir), data, base, batch.describe()))))
            if len(pending) >= 2 * workers:
                done, result = pending.popleft()
                yield done, result.get()
        while pending:
            done, result = pending.popleft()
            yield done, result.get()
        pool.close()
        pool.join()
    finally:
        pool.terminate()  # a failure, Ctrl-C or SIGTERM: stop what still runs, now


def score(model_dir: Path, batches: Iterable[Batch], sink: OutputSink, signature: Signature,
          *, workers: int = 1, prediction_column: str = "prediction",
          id_column: str | None = None,
          progress: Callable[[int], None] | None = None) -> Scored:
    """Score every batch and write input rows plus predictions to `sink`, in input order."""
    started = time.monotonic()
    rows = count = 0
    for batch, (status, value) in _results(model_dir, batches, signature, prediction_column,
                                           workers):
        if status == "load-failed":
            raise OperationFailed(value, hint="install the package in this environment (the "
                                              "local engine runs the model here)")
        if status == "failed":
            raise OperationFailed(value, hint="check those rows; the model's own message "
                                              "says what it did not accept")
        sink.write(batch.file, predictions.with_predictions(batch.data, value, id_column))
        rows += batch.rows
        count += 1
        if progress is not None:
            progress(batch.rows)
    return Scored(rows, count, time.monotonic() - started)
