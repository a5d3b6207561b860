"""Bounded retries with exponential backoff for transient network faults.

Registries behind proxies and load balancers answer 429/5xx or drop connections now and then; a
copy must ride over that, yet fail cleanly within a bounded time when the fault persists.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from amlpromote.core.errors import BadInput

T = TypeVar("T")

RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
# Retries of a failing file transfer unless AMLPROMOTE_RETRIES says otherwise.
DEFAULT_RETRIES = 5


class TransientError(Exception):
    """A failure worth another attempt; `retry_after` is the server's Retry-After, if any."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 6
    base_delay: float = 0.5
    max_delay: float = 10.0
    # An upper bound on the total time spent sleeping between attempts of one operation.
    max_total_sleep: float = 30.0

    @classmethod
    def from_env(cls) -> RetryPolicy:
        """The policy `AMLPROMOTE_RETRIES` asks for; commands check it when they start
        (`settings.check_environment`), so a bad value fails before anything is read."""
        raw = os.environ.get("AMLPROMOTE_RETRIES", "").strip() or str(DEFAULT_RETRIES)
        try:
            retries = int(raw)
        except ValueError:
            retries = -1
        if retries < 0:
            raise BadInput(f"AMLPROMOTE_RETRIES={raw!r} is not a whole number of retries",
                           hint=f"set AMLPROMOTE_RETRIES to 0 or more (default {DEFAULT_RETRIES}),"
                                " or unset it")
        return cls(attempts=retries + 1)

    def delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_delay)
        backoff = self.base_delay * (2 ** (attempt - 1))
        return min(backoff * (0.5 + random.random() / 2), self.max_delay)


def call_with_retry(operation: Callable[[], T], policy: RetryPolicy,
                    on_retry: Callable[[int, Exception, float], None] | None = None) -> T:
    """Run `operation`, retrying on TransientError until the policy's bounds are reached."""
    slept = 0.0
    attempt = 1
    while True:
        try:
            return operation()
        except TransientError as exc:
            if attempt >= policy.attempts:
                raise
            pause = policy.delay(attempt, exc.retry_after)
            if slept + pause > policy.max_total_sleep:
                raise
            if on_retry is not None:
                on_retry(attempt, exc, pause)
            time.sleep(pause)
            slept += pause
            attempt += 1


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        return None  # an HTTP date; backoff is good enough
