"""The online scoring client: data frames sent to an online endpoint (an Azure ML managed online
endpoint or a local endpoint, both with the contract of core/deploy/scoring.py), concurrently,
with retries, and the answers handed back in input order.

Each frame is cut into requests of `batch_size` rows, sent as split-orientation `input_data`
(`{"columns", "index", "data"}`, index = the rows' 0-based numbers in their file) by a small
pool of daemon threads, each with its own `requests.Session` (keep-alive connections; the
environment's proxies and CA bundle apply as for any requests client). At most
`2 * concurrency` requests' rows are held at once, so an input of any size streams.

What is retried, and why:

- 429 and 503 (the front door's throttling and "not ready"), 408, 502, 504, and a dropped
  connection or a timeout: transient by nature; Retry-After is honoured when given;
- 424 whose `ms-azureml-model-error-statuscode` is 502 or 503: the container is restarting
  behind the front door; any other 424 is the model failing on these rows, and retrying the
  same rows gives the same failure;
- 413: not retried as such, the rows are split in two and both halves sent (a body we can
  tell is over Azure ML's 1.5 MB limit is split before it is sent at all); a request of more
  than one row answered 408 twice is split the same way (smaller requests may fit the
  deployment's request timeout);
- 401: the key or token is fetched again once (tokens expire during long runs).

The first failure that is not retried (or retried `max_attempts` times) stops the run: nothing
more is sent, and the error names the rows it was about ("rows 201-300 of data.csv").

Imports requests, numpy and pandas inside functions: the CLI imports this module at start.
"""

from __future__ import annotations

import contextlib
import datetime
import decimal
import email.utils
import json
import math
import queue
import random
import threading
import urllib.parse
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, InvalidStateError, wait
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from amlpromote.core.deploy.platform import endpoints_command
from amlpromote.core.deploy.scoring import (
    DEPLOYMENT_HEADER,
    MAX_PAYLOAD_BYTES,
    MODEL_ERROR_STATUS_HEADER,
    json_default,
)
from amlpromote.core.errors import AuthFailed, BadInput, NotFound, OperationFailed, Unreachable

if TYPE_CHECKING:
    import pandas as pd
    import requests

# Answers worth another attempt with the same rows.
RETRYABLE_STATUS = frozenset({408, 429, 502, 503, 504})
# A 424 whose container status is one of these is a container restarting or not ready yet.
RETRYABLE_CONTAINER_STATUS = frozenset({"502", "503"})
BACKOFF_BASE = 0.5
BACKOFF_CAP = 30.0
# A Retry-After beyond this is not waited out in full: the next attempt asks again.
RETRY_AFTER_CAP = 60.0
MESSAGE_CHARS = 300
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})

Batch = tuple[str, int, "pd.DataFrame"]
Answered = tuple[str, int, list[Any]]


class _Stopped(Exception):
    """The run is stopping (another request failed, or the caller went away)."""


class _TooLarge(Exception):
    """The endpoint answered 413 for these rows."""


@dataclass
class _Piece:
    """Rows of one file sent (or to be sent) in one request."""

    label: str
    first_row: int  # 0-based, in the file
    frame: pd.DataFrame

    @property
    def rows(self) -> int:
        return len(self.frame)

    def part(self, start: int, stop: int) -> _Piece:
        return _Piece(self.label, self.first_row + start, self.frame.iloc[start:stop])

    def describe(self) -> str:
        return row_range(self.label, self.first_row, self.rows)


def row_range(label: str, first_row: int, rows: int) -> str:
    """"rows 201-300 of data.csv" (1-based, inclusive), "row 7 of data.csv" for one row."""
    if rows == 1:
        return f"row {first_row + 1} of {label}"
    return f"rows {first_row + 1}-{first_row + rows} of {label}"


class OnlineScorer:
    """Scores frames against one online endpoint's scoring URI.

    `authorization()` returns what goes after "Bearer " (an endpoint key or a token); it is
    called when scoring starts and once more after a 401. `deployment` pins one deployment
    (the `azureml-model-deployment` header) instead of the endpoint's traffic split. `verify`
    is requests' `verify`: True uses the default CA bundle (or REQUESTS_CA_BUNDLE). `name`
    and `place` (EndpointPlatform.place) make the hints' `amlpromote endpoints` commands.
    """

    def __init__(self, scoring_uri: str, authorization: Callable[[], str],
                 deployment: str | None = None, *, batch_size: int = 100,
                 concurrency: int = 4, max_attempts: int = 8, timeout: float = 90.0,
                 verify: str | bool = True, name: str = "NAME", place: str = "") -> None:
        for what, value in (("batch size", batch_size), ("concurrency", concurrency),
                            ("attempts", max_attempts)):
            if value < 1:
                raise BadInput(f"the {what} must be at least 1, not {value}")
        if timeout <= 0:
            raise BadInput(f"the request timeout must be positive, not {timeout}")
        self.scoring_uri = scoring_uri
        self.authorization = authorization
        self.deployment = deployment
        self.batch_size = batch_size
        self.concurrency = concurrency
        self.max_attempts = max_attempts
        self.timeout = timeout
        self.verify = verify
        self.name = name
        self.place = place
        parsed = urllib.parse.urlsplit(scoring_uri)
        # What errors call the endpoint: never the query (a URI could carry a signature there).
        host = parsed.hostname or ""
        host = f"[{host}]" if ":" in host else host
        netloc = f"{host}:{parsed.port}" if parsed.port else host
        self.where = urllib.parse.urlunsplit((parsed.scheme, netloc, parsed.path, "", ""))
        # A loopback endpoint (local endpoints) is never reached through the user's proxy.
        self.proxies: dict[str, str] | None = (
            {"http": "", "https": ""} if (parsed.hostname or "") in LOOPBACK_HOSTS else None)

    def predict(self, batches: Iterable[Batch],
                progress: Callable[[int], None] | None = None) -> Iterator[Answered]:
        """(label, first_row, answers) for each (label, first_row, frame) of `batches`, in the
        same order, `answers` holding one endpoint answer per row of the frame.

        `progress(n)` is called (in this thread) as each request's `n` rows are scored. Raises
        AuthFailed, NotFound or OperationFailed naming the rows that failed; on any failure,
        on KeyboardInterrupt and when the iterator is closed early, nothing more is sent.
        """
        run = _Run(self, progress)
        completed = False
        try:
            yield from run.results(batches)
            completed = True
        finally:
            run.close(completed)

    # -- one request --------------------------------------------------------------------------

    def _session(self) -> requests.Session:
        import requests
        from requests.adapters import HTTPAdapter

        session = requests.Session()
        # One connection per thread; retries are ours, with the rows' range in the message.
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=1, max_retries=0)
        session.mount("https://", adapter)
        session.mount("http://", adapter)
        session.headers["Content-Type"] = "application/json"
        if self.deployment:
            session.headers[DEPLOYMENT_HEADER] = self.deployment
        return session

    def command(self, verb: str, deployment: bool = False) -> str:
        """`amlpromote endpoints VERB NAME ...` for this endpoint, as a hint names it."""
        return endpoints_command(self, f"{verb} {self.name}",
                                 self.deployment if deployment else None)

    def _target(self) -> str:
        return (f"deployment {self.deployment!r} of the endpoint at {self.where}"
                if self.deployment else f"the endpoint at {self.where}")


@dataclass
class _Frame:
    """One input frame on its way: its answers so far and how many requests are still out."""

    label: str
    first_row: int
    answers: list[Any] = field(default_factory=list)
    outstanding: int = 0
    submitted: bool = False


class _Credential:
    """The current key or token, shared by the threads; fetched again after a 401."""

    def __init__(self, fetch: Callable[[], str]) -> None:
        self._fetch = fetch
        self._lock = threading.Lock()
        self._value: str | None = None
        self._generation = 0

    def current(self) -> tuple[str, int]:
        with self._lock:
            if self._value is None:
                self._value = self._fetch()
                self._generation += 1
            return self._value, self._generation

    def refresh(self, seen: int) -> tuple[str, int]:
        """A fresh value, unless another thread already refreshed the one `seen` was."""
        with self._lock:
            if self._generation == seen or self._value is None:
                self._value = self._fetch()
                self._generation += 1
            return self._value, self._generation


class _Run:
    """One `predict` call: the worker threads, the window of requests in flight, the stop."""

    def __init__(self, scorer: OnlineScorer, progress: Callable[[int], None] | None) -> None:
        self.scorer = scorer
        self.progress = progress
        self.credential = _Credential(scorer.authorization)
        self.stop = threading.Event()
        # Set (with the exception) by the first request that fails; the main thread waits on
        # it beside the request it needs next, so a failure anywhere stops the run at once.
        self.failure: Future[None] = Future()
        self.work: queue.SimpleQueue[tuple[Future[list[Any]], _Piece] | None] = \
            queue.SimpleQueue()
        self.threads: list[threading.Thread] = []
        # Requests in input order, each with the frame it belongs to.
        self.order: deque[tuple[_Frame, Future[list[Any]]]] = deque()
        # Requests whose rows progress has not been told about yet, with their row counts.
        self.unreported: dict[Future[list[Any]], int] = {}
        self.window = 2 * scorer.concurrency
        # Rows per request after an endpoint refused a larger one with 413 (None: batch size).
        self.row_cap: int | None = None
        self._cap_lock = threading.Lock()

    # -- main thread --------------------------------------------------------------------------

    def results(self, batches: Iterable[Batch]) -> Iterator[Answered]:
        size = self.scorer.batch_size
        for label, first_row, frame in batches:
            entry = _Frame(label, first_row)
            rows = len(frame)
            if rows == 0:
                done: Future[list[Any]] = Future()
                done.set_result([])
                entry.outstanding = 1
                self.order.append((entry, done))
            for start in range(0, rows, size):
                while len(self.order) >= self.window:
                    yield from self._release_head()
                self._submit(entry, _Piece(label, first_row, frame).part(start, start + size))
            entry.submitted = True
            while self.order and self.order[0][1].done():
                yield from self._release_head()
        while self.order:
            yield from self._release_head()

    def _submit(self, entry: _Frame, piece: _Piece) -> None:
        if not self.threads:
            # The first key or token is fetched here, so the credential chain's own error
            # reaches the caller as it is, before any thread starts.
            self.credential.current()
            self._start_threads()
        future: Future[list[Any]] = Future()
        entry.outstanding += 1
        self.order.append((entry, future))
        self.unreported[future] = piece.rows
        self.work.put((future, piece))

    def _release_head(self) -> Iterator[Answered]:
        entry, head = self.order[0]
        answers = self._wait_for(head)
        self.order.popleft()
        entry.answers.extend(answers)
        entry.outstanding -= 1
        if entry.submitted and entry.outstanding == 0:
            yield entry.label, entry.first_row, entry.answers

    def _wait_for(self, head: Future[list[Any]]) -> list[Any]:
        while True:
            self._report_progress()
            if self.failure.done():
                self.failure.result()  # raises the failure
            if head.done():
                return head.result()
            # Any request finishing wakes this (for progress), as does a failure anywhere.
            waited: list[Future[Any]] = [*self.unreported, self.failure]
            wait(waited, return_when=FIRST_COMPLETED)

    def _report_progress(self) -> None:
        finished = [f for f in self.unreported if f.done()]
        for future in finished:
            rows = self.unreported.pop(future)
            if self.progress is not None and not future.cancelled() \
                    and future.exception() is None and rows:
                self.progress(rows)

    def close(self, completed: bool) -> None:
        """Stop the threads. After a failure, Ctrl-C or an early close, queued requests are
        cancelled and requests in flight are not waited for (the threads are daemons; each
        exits when its request returns)."""
        if not completed:
            self.stop.set()
        while True:
            try:
                item = self.work.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                item[0].cancel()
        for _ in self.threads:
            self.work.put(None)
        if completed:
            for thread in self.threads:
                thread.join()

    def _start_threads(self) -> None:
        for number in range(self.scorer.concurrency):
            thread = threading.Thread(target=self._work, name=f"amlpromote-score-{number}",
                                      daemon=True)
            thread.start()
            self.threads.append(thread)

    # -- worker threads -----------------------------------------------------------------------

    def _work(self) -> None:
        session = self.scorer._session()
        try:
            while True:
                item = self.work.get()
                if item is None:
                    return
                future, piece = item
                if not future.set_running_or_notify_cancel():
                    continue
                try:
                    answers = self._score(session, piece)
                except _Stopped as exc:
                    future.set_exception(exc)
                except Exception as exc:
                    self._fail(exc)
                    future.set_exception(exc)
                else:
                    future.set_result(answers)
        finally:
            session.close()

    def _fail(self, exc: Exception) -> None:
        # The failure before the stop: a request that sees the stop and gives up must find the
        # failure already there when the main thread looks.
        with contextlib.suppress(InvalidStateError):  # only the first failure is reported
            self.failure.set_exception(exc)
        self.stop.set()

    def _score(self, session: requests.Session, piece: _Piece) -> list[Any]:
        cap = self.row_cap
        if cap is not None and piece.rows > cap:
            answers: list[Any] = []
            for start in range(0, piece.rows, cap):
                answers.extend(self._score_fitting(session, piece.part(start, start + cap)))
            return answers
        return self._score_fitting(session, piece)

    def _score_fitting(self, session: requests.Session, piece: _Piece) -> list[Any]:
        """The answers for `piece`, split in halves for as long as it is too large."""
        try:
            body = request_body(piece.frame, piece.first_row)
        except BadInput as exc:
            raise BadInput(f"{piece.describe()}: {exc.message}", exc.hint) from None
        too_large = len(body) > MAX_PAYLOAD_BYTES
        if not too_large:
            try:
                return self._send(session, piece, body)
            except _TooLarge:
                too_large = True
        if piece.rows == 1:
            raise OperationFailed(
                f"{piece.describe()}: the row is {len(body):,} bytes of JSON, too large for "
                "one request to the endpoint (413 Payload too large)",
                hint=f"online endpoints take at most {MAX_PAYLOAD_BYTES:,} bytes per request; "
                     "score rows this large with --model instead")
        half = (piece.rows + 1) // 2
        with self._cap_lock:
            # Later requests start at the size that may fit instead of finding it again.
            self.row_cap = half if self.row_cap is None else min(self.row_cap, half)
        return (self._score_fitting(session, piece.part(0, half))
                + self._score_fitting(session, piece.part(half, piece.rows)))

    def _send(self, session: requests.Session, piece: _Piece, body: bytes) -> list[Any]:
        import requests

        scorer = self.scorer
        token, generation = self.credential.current()
        refreshed = False
        attempt = 0
        while True:
            if self.stop.is_set():
                raise _Stopped()
            attempt += 1
            try:
                response = session.post(
                    scorer.scoring_uri, data=body, headers={"Authorization": "Bearer " + token},
                    timeout=scorer.timeout, verify=scorer.verify, proxies=scorer.proxies)
                status = response.status_code
                if status == 200:
                    return self._answers(piece, response)
                content = response.content  # read now: a body cut short is a dropped answer
            except requests.exceptions.SSLError:
                raise OperationFailed(
                    f"{piece.describe()}: TLS with {scorer.where} failed (certificate not "
                    "trusted or wrong host)",
                    hint="set REQUESTS_CA_BUNDLE to the CA bundle that signs its certificate"
                ) from None
            except (requests.ConnectionError, requests.Timeout,
                    requests.exceptions.ChunkedEncodingError) as exc:
                if attempt >= scorer.max_attempts:
                    raise Unreachable(
                        f"{piece.describe()}: {scorer._target()} did not answer "
                        f"({_exception_name(exc)}) in {attempt} attempts",
                        hint=f"check that the endpoint is up ({scorer.command('show')}), the "
                             "network and the proxy settings") from None
                self._pause(attempt, None)
                continue
            if status == 401:
                if refreshed:
                    raise AuthFailed(
                        f"{piece.describe()}: {scorer._target()} refused the key or token "
                        f"(401): {_message(content)}",
                        hint=f"check the endpoint's key or your login ({scorer.command('keys')} "
                             "shows the key is readable)")
                refreshed = True
                token, generation = self.credential.refresh(generation)
                continue
            if status == 403:
                raise AuthFailed(
                    f"{piece.describe()}: {scorer._target()} refused access (403): "
                    f"{_message(content)}",
                    hint="the identity needs permission to score on this endpoint")
            if status == 413:
                raise _TooLarge()
            if status == 408 and piece.rows > 1 and attempt >= 2:
                # Twice too slow for the deployment's request timeout: smaller requests may
                # fit it (a 5 s default on Azure ML), as a 413's halves fit the size limit.
                raise _TooLarge()
            if status == 404:
                raise NotFound(
                    f"{piece.describe()}: {scorer._target()} answered 404: {_message(content)}",
                    hint=f"check the endpoint and --deployment names ({scorer.command('show')} "
                         "lists its deployments)")
            container = response.headers.get(MODEL_ERROR_STATUS_HEADER)
            what = f"{status}" + (f" (model status {container})" if container else "")
            retryable = status in RETRYABLE_STATUS or (
                status == 424 and (container or "").strip() in RETRYABLE_CONTAINER_STATUS)
            if not retryable:
                raise OperationFailed(
                    f"{piece.describe()}: {scorer._target()} answered {what}: "
                    f"{_message(content)}",
                    hint=_hint_for(status, container, scorer.command("logs", deployment=True)))
            if attempt >= scorer.max_attempts:
                raise OperationFailed(
                    f"{piece.describe()}: {scorer._target()} still answered {what} after "
                    f"{attempt} attempts: {_message(content)}",
                    hint="the endpoint is overloaded or restarting: try again later, or with "
                         "a lower --concurrency")
            self._pause(attempt, parse_retry_after(response.headers.get("Retry-After")))

    def _pause(self, attempt: int, retry_after: float | None) -> None:
        if self.stop.wait(backoff_delay(attempt, retry_after)):
            raise _Stopped()

    def _answers(self, piece: _Piece, response: requests.Response) -> list[Any]:
        target = self.scorer._target()
        try:
            document = response.json()
        except ValueError:
            raise OperationFailed(
                f"{piece.describe()}: {target} answered 200 with a body that is not JSON",
                hint="is the scoring URI an Azure ML or local online endpoint?") from None
        # Azure ML's MLflow scoring script answers the list; `mlflow models serve` wraps it.
        if isinstance(document, dict) and set(document) == {"predictions"}:
            document = document["predictions"]
        if not isinstance(document, list):
            raise OperationFailed(
                f"{piece.describe()}: {target} answered a JSON {type(document).__name__}, not "
                "a list of one prediction per row",
                hint="the model's predict must return one value or record per input row")
        if len(document) != piece.rows:
            raise OperationFailed(
                f"{piece.describe()}: {target} answered {len(document)} predictions for "
                f"{piece.rows} rows",
                hint="the model's predict must return one value or record per input row")
        return document


# -- requests and answers ---------------------------------------------------------------------


def request_body(frame: pd.DataFrame, first_row: int) -> bytes:
    """The scoring request for `frame`: `{"input_data": {"columns", "index", "data"}}`, index
    the rows' 0-based numbers in their file (`first_row` onwards); missing values (NaN, None,
    NA, NaT) are null, numpy values plain JSON numbers, timestamps ISO 8601 strings.

    BadInput names a column whose values JSON cannot carry."""
    columns = [str(name) for name in frame.columns]
    values = [_json_column(column) for _, column in frame.items()]
    rows = len(frame)
    data = list(zip(*values, strict=True)) if values else [() for _ in range(rows)]
    document = {"input_data": {"columns": columns,
                               "index": list(range(first_row, first_row + rows)),
                               "data": data}}
    try:
        return json.dumps(document, default=_json_default, separators=(",", ":")).encode()
    except (TypeError, ValueError):
        for name, column in zip(columns, values, strict=True):
            try:
                json.dumps(column, default=_json_default)
            except (TypeError, ValueError) as exc:
                raise BadInput(f"column {name!r} holds values JSON cannot carry ({exc})",
                               hint="convert the column to numbers or strings, or score with "
                                    "--model") from None
        raise


def _json_column(column: pd.Series) -> list[Any]:
    """One column as JSON-ready Python values; plain numpy columns go through numpy (fast)."""
    import numpy as np
    import pandas as pd

    dtype = column.dtype
    if isinstance(dtype, np.dtype):
        if dtype.kind in "iub":
            return column.to_numpy().tolist()
        if dtype.kind == "f":
            array = column.to_numpy()
            plain: list[Any] = array.tolist()
            if np.isnan(array).any():
                plain = [None if value != value else value for value in plain]
            return plain
    if dtype.kind == "M" or isinstance(dtype, pd.DatetimeTZDtype):
        return [None if value is pd.NaT else value.isoformat() for value in column]
    return [_json_scalar(value) for value in column.tolist()]


def _json_scalar(value: Any) -> Any:
    import numpy as np
    import pandas as pd

    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, float | np.floating):
        return None if math.isnan(value) else float(value)
    if isinstance(value, np.datetime64):
        return None if np.isnat(value) else pd.Timestamp(value).isoformat()
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    return value


def _json_default(value: Any) -> Any:
    # Values nested in cells (lists, arrays, numpy scalars in object columns): the scoring
    # contract's encoder, plus the decimals a parquet file may hold.
    if isinstance(value, decimal.Decimal):
        return float(value)
    return json_default(value)


def _message(content: bytes) -> str:
    """The endpoint's own words from an error body (`{"message": ...}`, ARM's `{"error":
    {"message": ...}}`, or the text), on one line and cut short."""
    text = content.decode("utf-8", "replace")
    with contextlib.suppress(ValueError):
        document = json.loads(text)
        if isinstance(document, dict):
            error = document.get("error")
            found = document.get("message") or (
                error.get("message") if isinstance(error, dict) else error)
            if found:
                text = str(found)
    line = " ".join(text.split()) or "(no message)"
    return line if len(line) <= MESSAGE_CHARS else line[:MESSAGE_CHARS - 3] + "..."


def _hint_for(status: int, container: str | None, logs: str) -> str:
    if status == 424 and container == "500":
        return (f"the model failed on these rows: see the deployment's log ({logs}) and check "
                "the rows against the model's signature")
    if status in (400, 415) or (status == 424 and container in ("400", "415")):
        return "the endpoint could not read these rows as the model's input"
    return f"see the deployment's log ({logs})"


def _exception_name(exc: BaseException) -> str:
    # The class only: requests' messages repeat the URL and urllib3's internals.
    return type(exc).__name__


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date."""
    if not value:
        return None
    text = value.strip()
    try:
        return max(float(text), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return max((when - datetime.datetime.now(datetime.UTC)).total_seconds(), 0.0)


def backoff_delay(attempt: int, retry_after: float | None) -> float:
    """Seconds before the attempt after `attempt`: the server's Retry-After when it gave one,
    else exponential backoff with jitter (so concurrent requests do not retry in step)."""
    if retry_after is not None:
        return min(retry_after, RETRY_AFTER_CAP)
    ceiling = min(BACKOFF_BASE * 2 ** (attempt - 1), BACKOFF_CAP)
    return random.uniform(ceiling / 2, ceiling)

