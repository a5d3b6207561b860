"""`amlpromote score`: predictions for a file, a folder of files or stdin, from an online
endpoint, from the model in this process, or on Spark."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, cast

import typer

from amlpromote.cli.options import (
    CredentialOpt,
    ProfileOpt,
    QuietOpt,
    RegistryOpt,
    ResourceGroupOpt,
    SourceOpt,
    SubscriptionOpt,
    TargetOpt,
    VerboseOpt,
    WorkspaceOpt,
)

if TYPE_CHECKING:
    from amlpromote.cli.output import Output
    from amlpromote.core.score.signature import Signature
    from amlpromote.core.score.tables import InputSet, OutputSink

HELP = """Score data: the input rows plus the model's predictions, in input order.

One of --model (the model runs here, or on Spark with --engine spark) or --endpoint (rows are
sent to an online endpoint, Azure ML or --local). --input is a CSV, parquet or JSON-lines
file, a folder of them, or - for CSV on stdin; it is read as a stream, never whole. --output
is a .csv or .parquet file, a folder (for a folder input: one output file per input file), or
- for JSON lines on stdout. The output appears only when the whole run succeeded (it is
written to a temporary name and renamed; --keep-partial keeps what was written on failure).

The input's columns are checked against the model's signature before anything is scored or
sent: missing columns and incompatible types are listed together (exit 2). Extra columns pass
through untouched.

--output takes the output mode too: --output json prints the run's summary as one JSON
document (give both: --output preds.parquet --output json). A folder literally named json
or human is written as ./json.

--engine local (default) runs mlflow.pyfunc in this environment, in --workers processes that
each load the model once (default: one per two CPUs for inputs over 64 MB, else one).
--engine spark runs mlflow.pyfunc.spark_udf (env_manager local: the model runs in this
environment) on the active Spark session (spark-submit, Databricks) or on --spark-master.

Examples:

\b
  amlpromote score --model uci-heart-classifier/1 --input heart.csv --output preds.csv
  amlpromote score --model ./model --input data/ --output preds/ --workers 4
  amlpromote score --model uci-heart-classifier@champion --profile prod --engine spark \\
      --input rows.parquet --output preds.parquet --spark-master 'local[*]'
  amlpromote score --endpoint heart --local --input heart.csv --output preds.parquet
  amlpromote score --endpoint heart-prod --profile prod --deployment green \\
      --input rows.csv --output - --batch-size 200 --concurrency 8
  cat rows.csv | amlpromote score --model ./model --input - --output - --id-column id
"""

# Inputs above this size get one worker per CPU by default; below it, the workers' start
# (each imports mlflow and loads the model, seconds) costs more than it saves.
PARALLEL_INPUT_BYTES = 64 * 1024 * 1024
LOCAL_BATCH_ROWS = 200_000
ONLINE_BATCH_ROWS = 2000
# The values of --output that are a result format, not a destination.
MODES = ("json", "human")


def register(app: typer.Typer) -> None:
    app.command("score", help=HELP)(score)


def destination_of(values: list[str]) -> str | None:
    """The rows' destination among --output's values (the others are result formats)."""
    from amlpromote.core.errors import BadInput

    destinations = [value for value in values if value.strip().lower() not in MODES]
    if len(destinations) > 1:
        raise BadInput(f"--output names two destinations: {destinations[0]} and "
                       f"{destinations[1]}",
                       hint="give one file or folder (and --output json for the summary)")
    return destinations[0] if destinations else None


def score(
    ctx: typer.Context,
    input_spec: Annotated[str | None, typer.Option(
        "--input", "-i", help="CSV, parquet or JSON-lines file, a folder of them, or - (CSV on "
                              "stdin).", show_default=False)] = None,
    output_values: Annotated[list[str] | None, typer.Option(
        "--output", "-o", help="Where the rows go: a .csv or .parquet file, a folder, or - "
                               "(JSON lines on stdout); json or human: the result format "
                               "(json: one summary document).  [env var: AMLPROMOTE_OUTPUT]",
        show_default=False)] = None,
    model: Annotated[str | None, typer.Option(
        "--model", "-m", help="Score with this model here: a version (NAME/3, NAME@ALIAS, "
                              "models:/NAME/3) in the target registry, or a local MLflow model "
                              "folder.", show_default=False)] = None,
    endpoint: Annotated[str | None, typer.Option(
        "--endpoint", "-e", help="Score through this online endpoint.",
        show_default=False)] = None,
    engine: Annotated[str, typer.Option(
        "--engine", help="With --model: local (mlflow.pyfunc here) or spark "
                         "(mlflow.pyfunc.spark_udf).")] = "local",
    from_: Annotated[str, typer.Option(
        "--from", help="With --model: find the version in the target or the source "
                       "registry.")] = "target",
    workers: Annotated[int | None, typer.Option(
        "--workers", min=1, max=64, help="Local engine processes [default: one per two CPUs "
                                         "for inputs over 64 MB, else 1].",
        show_default=False)] = None,
    batch_size: Annotated[int | None, typer.Option(
        "--batch-size", min=1, max=1_000_000,
        help="Rows per request (endpoint, default 2,000, halved while the endpoint answers 413 "
             "or times out) or per model call (local, default 200,000).",
        show_default=False)] = None,
    concurrency: Annotated[int, typer.Option(
        "--concurrency", min=1, max=64, help="Requests in flight (endpoint).")] = 4,
    deployment: Annotated[str | None, typer.Option(
        "--deployment", "-d", help="Send every request to this deployment of the endpoint.",
        show_default=False)] = None,
    local: Annotated[bool, typer.Option(
        "--local", help="The endpoint is a local endpoint of this machine.")] = False,
    prediction_column: Annotated[str, typer.Option(
        "--prediction-column", help="Name of the prediction column (several outputs: "
                                    "NAME_OUTPUT, e.g. prediction_risk).")] = "prediction",
    id_column: Annotated[str | None, typer.Option(
        "--id-column", help="Keep only this input column beside the predictions.",
        show_default=False)] = None,
    output_format: Annotated[str | None, typer.Option(
        "--output-format", help="csv, parquet or jsonl, whatever the output's name says.",
        show_default=False)] = None,
    keep_partial: Annotated[bool, typer.Option(
        "--keep-partial", help="On failure keep what was written, as NAME.partial.")] = False,
    spark_master: Annotated[str, typer.Option(
        "--spark-master", help="Spark master when no Spark session is active.")] = "local[*]",
    source: SourceOpt = None,
    target: TargetOpt = None,
    profile: ProfileOpt = None,
    workspace: WorkspaceOpt = None,
    resource_group: ResourceGroupOpt = None,
    subscription: SubscriptionOpt = None,
    registry: RegistryOpt = None,
    credential: CredentialOpt = None,
    quiet: QuietOpt = None,
    verbose: VerboseOpt = None,
) -> None:
    from amlpromote.cli.runner import make_output, run

    modes = [v.strip().lower() for v in output_values or [] if v.strip().lower() in MODES]
    out = make_output(ctx, modes[-1] if modes else None, quiet, verbose)
    destination = run(out, lambda: destination_of(output_values or []))
    options: dict[str, Any] = dict(input_spec=input_spec, destination=destination, model=model,
                   endpoint=endpoint, engine=engine, from_=from_, workers=workers,
                   batch_size=batch_size, concurrency=concurrency, deployment=deployment,
                   local=local, prediction_column=prediction_column, id_column=id_column,
                   output_format=output_format, keep_partial=keep_partial,
                   spark_master=spark_master, source=source, profile=profile,
                   targets={"target": target, "workspace": workspace,
                            "resource_group": resource_group, "subscription": subscription,
                            "registry": registry, "credential": credential})
    summary = run(out, lambda: _score(out, **options))
    _render(out, summary, destination)


def _render(out: Output, summary: dict[str, Any], destination: str | None) -> None:
    def human() -> None:
        stream = sys.stderr if destination == "-" else sys.stdout
        files, rows = summary["files"], summary["rows"]
        print(f"scored {rows:,} row{'s' if rows != 1 else ''} from {files} "
              f"file{'s' if files != 1 else ''} in {summary['seconds']:.1f}s "
              f"({_rate(summary['rows_per_second'])} rows/s) -> {summary['output']}",
              file=stream)

    out.result(summary, human, None if destination == "-" else summary["output"])


def _rate(per_second: float) -> str:
    # Whole numbers once they are large; three significant digits below (5 rows in 6.4 s is
    # 0.781 rows/s, not "1 rows/s").
    return f"{per_second:,.0f}" if per_second >= 100 else f"{per_second:.3g}"


class RowProgress:
    """Rows scored, rows/s and elapsed: a live line on a terminal, a line every 15 s in a CI
    log, nothing in quiet or JSON mode."""

    def __init__(self, out: Output) -> None:
        self.enabled = not (out.quiet or out.json)
        self.interactive = sys.stderr.isatty()
        self.started = time.monotonic()
        self.rows = 0
        self._shown = self.started

    def __call__(self, rows: int) -> None:
        self.rows += rows
        now = time.monotonic()
        if not self.enabled or now - self._shown < (0.2 if self.interactive else 15.0):
            return
        self._shown = now
        elapsed = now - self.started
        line = (f"scoring: {self.rows:,} rows, {_rate(self.rows / max(elapsed, 1e-9))} rows/s "
                f"({elapsed:.0f}s)")
        if self.interactive:
            print(f"\r\x1b[2K{line}", end="", file=sys.stderr, flush=True)
        else:
            print(line, file=sys.stderr, flush=True)

    def done(self) -> None:
        if self.enabled and self.interactive and self._shown > self.started:
            print("\r\x1b[2K", end="", file=sys.stderr, flush=True)


def _check_options(*, input_spec: str | None, destination: str | None, model: str | None,
                   endpoint: str | None, engine: str, from_: str, workers: int | None,
                   deployment: str | None, local: bool, output_format: str | None,
                   id_column: str | None, prediction_column: str, json_mode: bool) -> None:
    from amlpromote.core.errors import BadInput

    if (model is None) == (endpoint is None):
        raise BadInput("score needs one of --model and --endpoint" if model is None
                       else "--model and --endpoint both given",
                       hint="--model REF scores here (or on Spark); --endpoint NAME sends the "
                            "rows to an online endpoint")
    if not input_spec:
        raise BadInput("no --input given",
                       hint="a CSV, parquet or JSON-lines file, a folder of them, or - for CSV "
                            "on stdin")
    remote = "://" in input_spec or input_spec.startswith("dbfs:")  # Spark reads those
    if input_spec != "-" and not remote and not Path(input_spec).expanduser().exists():
        from amlpromote.core.errors import NotFound

        raise NotFound(f"--input {input_spec}: no such file or folder",
                       hint="a CSV, parquet or JSON-lines file, a folder of them, or - for CSV "
                            "on stdin")
    if not destination:
        raise BadInput("no --output destination given",
                       hint="a .csv or .parquet file, a folder, or - for JSON lines on stdout")
    if engine not in ("local", "spark"):
        raise BadInput(f"--engine {engine!r} is not local or spark",
                       hint="local (default) runs the model here; spark uses spark_udf")
    if from_ not in ("target", "source"):
        raise BadInput(f"--from {from_!r} is not target or source",
                       hint="target (default) or source: the registry that holds REF")
    if endpoint is not None:
        unused = [flag for flag, given in (("--engine", engine != "local"),
                                           ("--workers", workers is not None),
                                           ("--from", from_ != "target")) if given]
        if unused:
            raise BadInput(f"{', '.join(unused)} applies to --model, not --endpoint",
                           hint="drop it, or score with --model")
        from amlpromote.core.deploy.where import check_name

        check_name("endpoint", endpoint)
        if deployment is not None:
            check_name("deployment", deployment)
    else:
        unused = [flag for flag, given in (("--deployment", deployment is not None),
                                           ("--local", local)) if given]
        if unused:
            raise BadInput(f"{', '.join(unused)} applies to --endpoint, not --model",
                           hint="drop it, or score with --endpoint")
        if engine == "spark" and (input_spec == "-" or destination == "-"):
            raise BadInput("--engine spark reads and writes files, not stdin or stdout",
                           hint="give --input and --output paths, or use --engine local")
        if engine == "spark" and workers is not None:
            raise BadInput("--workers applies to --engine local",
                           hint="Spark's parallelism follows --spark-master (local[N])")
    if output_format is not None and output_format not in ("csv", "parquet", "jsonl"):
        raise BadInput(f"--output-format {output_format!r} is not csv, parquet or jsonl",
                       hint="or leave it out: the output's extension decides")
    if json_mode and destination == "-":
        raise BadInput("--output - writes the rows to stdout, where --output json would also "
                       "print the summary", hint="write the rows to a file, or drop --output "
                                                 "json")
    if not prediction_column.strip():
        raise BadInput("--prediction-column is empty", hint="e.g. --prediction-column score")
    if id_column is not None and not id_column.strip():
        raise BadInput("--id-column is empty", hint="name an input column")


def _score(out: Output, *, input_spec: str | None, destination: str | None,
           model: str | None, endpoint: str | None, engine: str, from_: str,
           workers: int | None, batch_size: int | None, concurrency: int,
           deployment: str | None, local: bool, prediction_column: str,
           id_column: str | None, output_format: str | None, keep_partial: bool,
           spark_master: str, source: str | None, profile: str | None,
           targets: dict[str, str | None]) -> dict[str, Any]:
    _check_options(input_spec=input_spec, destination=destination, model=model,
                   endpoint=endpoint, engine=engine, from_=from_, workers=workers,
                   deployment=deployment, local=local, output_format=output_format,
                   id_column=id_column, prediction_column=prediction_column,
                   json_mode=out.json)
    assert input_spec is not None and destination is not None
    started = time.monotonic()
    if model is not None and engine == "spark":
        return _score_spark(out, model, input_spec, destination, from_=from_, source=source,
                            profile=profile, targets=targets, prediction_column=prediction_column,
                            id_column=id_column, output_format=output_format,
                            keep_partial=keep_partial, master=spark_master, started=started)
    if model is not None:
        # The version is found (and its signature read) before any input is opened; a
        # registered version is fetched only once the input and output were checked.
        found = _find_model(model, from_, source, profile, targets)
        return _score_local(out, found, input_spec, destination, workers=workers,
                            batch_size=batch_size or LOCAL_BATCH_ROWS,
                            prediction_column=prediction_column, id_column=id_column,
                            output_format=output_format, keep_partial=keep_partial,
                            started=started)
    assert endpoint is not None
    return _score_online(out, endpoint, input_spec, destination, deployment=deployment,
                         local=local, profile=profile, targets=targets,
                         batch_size=batch_size or ONLINE_BATCH_ROWS, concurrency=concurrency,
                         prediction_column=prediction_column, id_column=id_column,
                         output_format=output_format, keep_partial=keep_partial,
                         started=started)


# -- the model ---------------------------------------------------------------------------------


@dataclass
class _FoundModel:
    """The model to score with: a local folder, or a registered version (its files read
    through `files`, whose listing the fetch into the cache reuses)."""

    signature: Signature
    folder: Path | None = None
    located: Any = None
    files: Any = None


def _local_folder(ref: str) -> Path | None:
    """REF as a local MLflow model folder; None when it names no path (a registered version)."""
    path = Path(ref).expanduser()
    if path.is_dir() and (path / "MLmodel").is_file():
        return path.resolve()
    if path.exists():
        from amlpromote.core.errors import BadInput

        raise BadInput(f"{ref} is not an MLflow model folder (it has no MLmodel file)",
                       hint="pass the folder that holds MLmodel, or a registered version "
                            "(NAME/VERSION)")
    if ref.startswith(("./", "../", "/", "~", ".\\", "..\\")):
        # Written as a path, so not a registered version (NAME/3 never starts like this).
        from amlpromote.core.errors import NotFound

        raise NotFound(f"no model folder at {ref}",
                       hint="check the path, or pass a registered version (NAME/VERSION)")
    return None


def _find_model(model: str, from_: str, source: str | None, profile: str | None,
                targets: dict[str, str | None]) -> _FoundModel:
    from amlpromote.core import config as cfg
    from amlpromote.core.deploy import fetch as fetching
    from amlpromote.core.deploy.where import default_profile
    from amlpromote.core.errors import BadInput
    from amlpromote.core.refs import parse_model_ref
    from amlpromote.core.score.signature import parse_mlmodel, read_signature
    from amlpromote.core.settings import resolve_target
    from amlpromote.core.uris import parse_registry_uri

    folder = _local_folder(model)
    if folder is not None:
        return _FoundModel(read_signature(folder), folder=folder)
    model_ref = parse_model_ref(model)
    _, values = default_profile(profile)
    if from_ == "source":
        src = cfg.resolve("source", source, values)
        if not src.value:
            raise BadInput("--from source: no source registry given",
                           hint="pass --source URI, set AMLPROMOTE_SOURCE, or configure a "
                                "profile")
        located = fetching.locate(parse_registry_uri(src.value, "source"), "source", model_ref)
    else:
        located = fetching.locate(resolve_target(targets, values).registry_uri(), "target",
                                  model_ref)
    files = fetching.RegistryModelFiles(located)
    signature = parse_mlmodel(files.read("MLmodel").decode("utf-8", "replace"))
    return _FoundModel(signature, located=located, files=files)


def _model_folder(out: Output, found: _FoundModel) -> Path:
    """The model's folder: a local one as it is, a registered version from the cache (fetched
    once, by digest)."""
    if found.folder is not None:
        return found.folder
    from amlpromote.core.deploy import fetch as fetching

    fetched = fetching.fetch(found.located, found.files, out.progress())
    if fetched.downloaded:
        out.note(f"fetched {found.located.name}/{found.located.number} into the model cache")
    return fetched.path


# -- local engine ------------------------------------------------------------------------------


def _open_checked(out: Output, signatures: list[tuple[str, Signature]], input_spec: str,
                  destination: str, output_format: str | None) -> InputSet:
    """The input opened with the first signature's types and checked against every one
    (`(name, signature)`: one per answering deployment, or one with no name), and the output
    checked; nothing is written."""
    from amlpromote.core.score import tables
    from amlpromote.core.score.signature import Signature, arrow_types, check_columns

    first = signatures[0][1] if signatures else Signature()
    for note in first.notes:
        out.note(f"note: {note}")
    inputs: InputSet = tables.open_input(input_spec, arrow_types(first) or None)
    where = "the input" if input_spec == "-" else input_spec
    for name, signature in signatures:
        check_columns(inputs.schema, signature,
                      where + (f" (deployment {name})" if len(signatures) > 1 else ""))
    tables.check_output(destination, inputs, output_format)
    return inputs


def _check_id_column(inputs: InputSet, id_column: str | None) -> None:
    if id_column is not None and id_column not in inputs.schema.names:
        from amlpromote.core.errors import BadInput

        raise BadInput(f"--id-column {id_column!r} is not a column of the input",
                       hint="its columns: " + ", ".join(inputs.schema.names[:20]))


def _default_workers(inputs: InputSet) -> int:
    size = 0
    for file in inputs.files:
        if file.path is None:
            return 1
        try:
            size += file.path.stat().st_size
        except OSError:
            return 1
    # One worker per two CPUs: each one's pyarrow and BLAS threads keep a second CPU busy
    # (measured on 2 CPUs: 2 workers were no faster than 1 on 10M rows).
    return max(1, (os.cpu_count() or 1) // 2) if size > PARALLEL_INPUT_BYTES else 1


def _score_local(out: Output, found: _FoundModel, input_spec: str, destination: str, *,
                 workers: int | None, batch_size: int, prediction_column: str,
                 id_column: str | None, output_format: str | None, keep_partial: bool,
                 started: float) -> dict[str, Any]:
    from amlpromote.core.score import local_engine, tables

    signature = found.signature
    inputs = _open_checked(out, [("", signature)], input_spec, destination, output_format)
    _check_id_column(inputs, id_column)
    model_dir = _model_folder(out, found)
    count = workers or _default_workers(inputs)
    if count == 1:
        local_engine.check_loads(model_dir)
    progress = RowProgress(out)
    sink: OutputSink = tables.open_output(destination, inputs, output_format, keep_partial)
    with _reporting(out, sink):
        scored = local_engine.score(model_dir, inputs.batches(batch_size), sink, signature,
                                    workers=count, prediction_column=prediction_column,
                                    id_column=id_column, progress=progress)
        if scored.rows == 0:
            _write_empty(sink, inputs, signature, prediction_column, id_column)
        written = sink.commit()
        progress.done()
        return _summary("local", scored.rows, len(inputs.files), written.location, started,
                        workers=count)


@contextlib.contextmanager
def _reporting(out: Output, sink: OutputSink) -> Iterator[OutputSink]:
    """The sink, aborted on any failure; an interrupt, or a failure after which rows are kept
    (--keep-partial), says what the output holds now. The block runs up to the command's
    result: an interrupt after the commit says the output is complete (after the block,
    `out.finish` records it)."""
    from amlpromote.core.errors import AmlPromoteError, Interrupted, interrupt_signal

    with sink:
        try:
            yield sink
            if sink.committed:
                out.finish(sink.left_behind())
        except KeyboardInterrupt as exc:
            sink.abort()  # (an output renamed into place as the signal came stays: committed)
            if sink.committed:
                out.finish(sink.left_behind())
                raise  # run() reports it with what was completed
            raise Interrupted(f"scoring stopped; {sink.left_behind()}",
                              hint="run the same command again",
                              signum=interrupt_signal(exc)) from None
        except AmlPromoteError as exc:
            if sink.abort() is not None:
                exc.message += f"; {sink.left_behind()}"
            raise


def _write_empty(sink: OutputSink, inputs: InputSet, signature: Signature,
                 prediction_column: str, id_column: str | None) -> None:
    """An empty input's output: its columns and the prediction columns, no rows."""
    import pyarrow as pa

    from amlpromote.core.score.signature import SCALAR_TYPES, arrow_type

    outputs = [c for c in signature.outputs or [] if c.name] if signature.output_names else (
        signature.outputs or [])[:1]
    fields = [inputs.schema.field(id_column)] if id_column else list(inputs.schema)
    chosen: list[Any] = list(outputs) or [None]
    for column in chosen:
        name = prediction_column if column is None or len(chosen) == 1 else (
            f"{prediction_column}_{column.name}")
        kind = arrow_type(column.type) if column is not None and column.type in SCALAR_TYPES \
            else pa.float64()
        fields.append(pa.field(name, kind))
    sink.write(inputs.files[0], pa.schema(fields).empty_table())


def _summary(mode: str, rows: int, files: int, location: str, started: float,
             **extra: Any) -> dict[str, Any]:
    seconds = time.monotonic() - started
    return {"status": "scored", "mode": mode, "rows": rows, "files": files,
            "output": location, "seconds": round(seconds, 3),
            "rows_per_second": round(rows / seconds, 1) if seconds > 0 else 0.0, **extra}


# -- Spark -------------------------------------------------------------------------------------


def _score_spark(out: Output, model: str, input_spec: str, destination: str, *, from_: str,
                 source: str | None, profile: str | None, targets: dict[str, str | None],
                 prediction_column: str, id_column: str | None, output_format: str | None,
                 keep_partial: bool, master: str, started: float) -> dict[str, Any]:
    from amlpromote.core.score.spark_engine import score_on_spark

    found = _find_model(model, from_, source, profile, targets)
    model_dir = _model_folder(out, found)
    signature = found.signature
    for note in signature.notes:
        out.note(f"note: {note}")
    if output_format == "jsonl":
        from amlpromote.core.errors import BadInput

        raise BadInput("--engine spark writes csv or parquet", hint="--output-format csv")
    result = score_on_spark(model_dir, input_spec, destination,
                            signature_types=signature.scalar_inputs or None,
                            output_names=signature.output_names,
                            prediction_column=prediction_column, id_column=id_column,
                            output_format=output_format, master=master,
                            keep_partial=keep_partial,
                            progress=lambda step: out.note(f"spark: {step}"))
    return _summary("spark", result.rows, result.files, result.output, started)


# -- online ------------------------------------------------------------------------------------


def _endpoint_signatures(platform: Any, info: Any, deployment: str | None,
                         where: Any) -> list[tuple[str, Signature]]:
    """The signature of each deployment that will answer: the pinned one, or those with
    traffic. Local deployments keep their model folder; Azure ML ones name the registered
    version, whose MLmodel is read from the registry."""
    from amlpromote.core.score.signature import Signature, parse_mlmodel, read_signature

    if deployment is not None:
        names = [info.require_deployment(deployment).name]
    else:
        names = [name for name, share in info.traffic.items() if share > 0]
    found: list[tuple[str, Signature]] = []
    for name in names:
        record = info.deployment(name)
        if record is None:
            continue
        if platform.kind == "local":
            from amlpromote.core.deploy.local import state as st

            state = st.read_state(st.endpoint_dir(info.name))
            kept = state.deployments.get(name) if state else None
            found.append((name, read_signature(Path(kept.path)) if kept else Signature()))
            continue
        text = _azure_mlmodel(record.model_asset_id, where)
        found.append((name, parse_mlmodel(text) if text is not None else Signature(
            notes=[f"the model of deployment {name} ({record.model_asset_id}) could not be "
                   "read: its input is scored without a column check"])))
    return found


def _azure_mlmodel(asset_id: str, where: Any) -> str | None:
    import re

    from amlpromote.core.deploy import fetch as fetching
    from amlpromote.core.refs import parse_model_ref

    match = re.search(r"/models/([^/]+)/versions/([^/]+)$", asset_id)
    if not match:
        return None
    registry_uri = where.choice.registry_uri()
    in_registry = asset_id.startswith("azureml://registries/")
    if in_registry != (where.choice.kind == "registry"):
        return None  # the version lives in a registry other than the one configured
    located = fetching.locate(registry_uri, "target",
                              parse_model_ref(f"{match[1]}/{match[2]}"))
    return fetching.RegistryModelFiles(located).read("MLmodel").decode("utf-8", "replace")


def _score_online(out: Output, endpoint: str, input_spec: str, destination: str, *,
                  deployment: str | None, local: bool, profile: str | None,
                  targets: dict[str, str | None], batch_size: int, concurrency: int,
                  prediction_column: str, id_column: str | None, output_format: str | None,
                  keep_partial: bool, started: float) -> dict[str, Any]:
    import collections

    from amlpromote.core.deploy.where import (
        default_profile,
        open_platform,
        require_endpoint,
        resolve_deploy_target,
    )
    from amlpromote.core.score import predictions, tables
    from amlpromote.core.score.online import OnlineScorer
    from amlpromote.core.score.signature import Signature, conform

    _, values = default_profile(profile)
    where = resolve_deploy_target(targets, values, local, profile)
    platform = open_platform(where)
    info = require_endpoint(platform, endpoint)
    signatures = _endpoint_signatures(platform, info, deployment, where)
    signature = signatures[0][1] if signatures else Signature()
    inputs = _open_checked(out, signatures, input_spec, destination, output_format)
    _check_id_column(inputs, id_column)
    scorer = OnlineScorer(info.scoring_uri, lambda: platform.get_key(endpoint), deployment,
                          batch_size=batch_size, concurrency=concurrency, name=endpoint,
                          place=platform.place)
    progress = RowProgress(out)
    order: collections.deque[Any] = collections.deque()

    def frames() -> Any:
        for batch in inputs.batches(max(batch_size * concurrency * 2, 10_000)):
            order.append(batch)
            data = conform(batch.data, signature, batch.describe())
            yield batch.file.name, batch.first_row, data.to_pandas()

    rows = 0
    sink: OutputSink = tables.open_output(destination, inputs, output_format, keep_partial)
    # closing(): a failure on the writing side stops the client's threads at once.
    with _reporting(out, sink):
        with contextlib.closing(cast(Generator[Any, None, None],
                                     scorer.predict(frames(), progress))) as answered:
            for _, _, answers in answered:
                batch = order.popleft()
                pairs = predictions.prediction_columns(answers, batch.rows, prediction_column,
                                                       batch.describe())
                sink.write(batch.file,
                           predictions.with_predictions(batch.data, pairs, id_column))
                rows += batch.rows
        if rows == 0:
            _write_empty(sink, inputs, signature, prediction_column, id_column)
        written = sink.commit()
        progress.done()
        return _summary("endpoint", rows, len(inputs.files), written.location, started,
                        endpoint=endpoint, platform=platform.kind, deployment=deployment)
