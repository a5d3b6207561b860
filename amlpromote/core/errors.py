"""One exception hierarchy for everything a user can cause or meet.

Every error carries a one-line message, a hint naming what to do next, and the process exit code
the CLI returns for it. The CLI maps them in one place (`amlpromote.cli.app`).
"""

from __future__ import annotations

# Exit codes, documented in the README.
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_AUTH = 4


class AmlPromoteError(Exception):
    """Base class: an expected failure with a message, a hint and an exit code."""

    exit_code = EXIT_FAILED
    kind = "failed"

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        # More to report than one line (a rolled-back deploy's log tail): lines printed under
        # the error, and keys added to (or overriding) the JSON failure document.
        self.detail_lines: list[str] = []
        self.document: dict[str, object] = {}

    def __str__(self) -> str:
        return self.message


class OperationFailed(AmlPromoteError):
    """The operation was valid but could not be completed (I/O, network, registry refused)."""


class BadInput(AmlPromoteError):
    """The user's input (option, URI, reference, file) is not usable."""

    exit_code = EXIT_USAGE
    kind = "bad-input"


class NotFound(AmlPromoteError):
    """A model, version, alias, profile or registry that was named does not exist."""

    exit_code = EXIT_NOT_FOUND
    kind = "not-found"


class AuthFailed(AmlPromoteError):
    """Authentication or authorization was refused."""

    exit_code = EXIT_AUTH
    kind = "auth"


class Unreachable(OperationFailed):
    """A registry or service could not be reached (after retries)."""

    kind = "unreachable"


class Terminated(KeyboardInterrupt):
    """SIGTERM (what CI runners and supervisors send), raised in the main thread the way Python
    raises KeyboardInterrupt for SIGINT (cli/interrupts.py installs the handler), so every
    `except KeyboardInterrupt` that cleans up after Ctrl-C cleans up after SIGTERM too."""

    signum = 15


def interrupt_signal(exc: BaseException) -> int:
    """The signal behind a KeyboardInterrupt: SIGTERM for `Terminated`, else SIGINT."""
    return int(getattr(exc, "signum", 2))


class Interrupted(AmlPromoteError):
    """The run was stopped by SIGINT or SIGTERM; the message says what was done and what not.

    Exit code 128 + the signal (130 for SIGINT, 143 for SIGTERM), the shell's convention."""

    kind = "interrupted"

    def __init__(self, message: str, hint: str | None = None, signum: int = 2) -> None:
        name = {2: "SIGINT", 15: "SIGTERM"}.get(signum, f"signal {signum}")
        super().__init__(f"interrupted by {name}: {message}", hint)
        self.signum = signum
        self.exit_code = 128 + signum


class UnusableRegistry(AmlPromoteError):
    """The URI names something that must not be used as this registry: not an MLflow store
    (another application's database, a plain web server), or one MLflow would have to change
    (core/registries/stores.py). Not a BadInput on purpose: callers that read BadInput from a
    registry call as "no such model" must not swallow it."""

    exit_code = EXIT_USAGE
    kind = "bad-input"
