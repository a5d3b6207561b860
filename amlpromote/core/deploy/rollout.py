"""The safe rollout, the same on every platform: plan, create, smoke test, traffic, rollback.

1. Read the endpoint. A deployment that already serves this model version with the asked
   traffic (or mirror) makes the deploy a no-op (`unchanged`, nothing is sent).
2. Plan: the deployment name (`--deployment`, else whichever of blue/green takes no traffic),
   traffic before -> after. A dry run stops here (`planned`).
3. Create the endpoint when missing, then the deployment, and wait (with `--timeout` for all).
4. Smoke test the new deployment alone (the `azureml-model-deployment` header), before any
   traffic reaches it.
5. Move traffic (or mirror it); `--retire-old` deletes deployments left with none.

When provisioning fails, the smoke test fails or the deadline passes, the endpoint's traffic is
left exactly as it was (the new deployment never had any), the new deployment is deleted (and
the endpoint too, when this deploy created it) unless `--keep-failed`, and the error carries
the last lines of the deployment's logs. Another operation on the endpoint (ARM's 409 while a
concurrent deploy runs) fails this deploy before it touched anything the other one owns.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from amlpromote.core.deploy.platform import (
    DeploymentFailed,
    DeploymentSettings,
    DeploymentSpec,
    DeploymentTimeout,
    EndpointBusy,
    EndpointInfo,
    EndpointPlatform,
    ModelVersion,
    Progress,
    endpoints_command,
    no_progress,
)
from amlpromote.core.errors import AmlPromoteError, BadInput, OperationFailed

BLUE_GREEN = ("blue", "green")
# The log lines a failed deploy reports.
LOG_TAIL = 30
# Azure ML mirrors at most this share of traffic (DESIGN.md, "Deploy and score contracts").
MAX_MIRROR = 50


@dataclass
class SmokeTest:
    """The smoke request and its check (core/deploy/smoke.py builds both)."""

    body: bytes
    rows: int
    check: Callable[[int, bytes, int], None]


@dataclass
class DeployRequest:
    endpoint: str
    model: ModelVersion
    smoke: SmokeTest | None
    deployment: str | None = None
    auth_mode: str = "key"
    traffic: int = 100
    mirror: int | None = None
    retire_old: bool = False
    keep_failed: bool = False
    timeout: float = 1800.0
    dry_run: bool = False
    settings: DeploymentSettings = field(default_factory=DeploymentSettings)


@dataclass
class DeployResult:
    status: str  # deployed | unchanged | planned
    platform: str
    endpoint: str
    deployment: str
    model: ModelVersion
    scoring_uri: str | None
    traffic_before: dict[str, int]
    traffic_after: dict[str, int]
    mirror_before: dict[str, int]
    mirror_after: dict[str, int]
    created_endpoint: bool = False
    replaced_deployment: bool = False
    retired: list[str] = field(default_factory=list)
    smoke_rows: int | None = None
    smoke_seconds: float | None = None
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "platform": self.platform,
            "endpoint": self.endpoint,
            "deployment": self.deployment,
            "model": self.model.as_dict(),
            "scoring_uri": self.scoring_uri,
            "traffic": {"before": self.traffic_before, "after": self.traffic_after},
            "mirror": {"before": self.mirror_before, "after": self.mirror_after},
            "created_endpoint": self.created_endpoint,
            "retired": self.retired,
            "smoke": (None if self.smoke_rows is None
                      else {"rows": self.smoke_rows, "seconds": round(self.smoke_seconds or 0, 3)}),
            "seconds": round(self.seconds, 3),
            "warnings": self.warnings,
        }


class RolledBack(OperationFailed):
    """The new deployment failed; traffic was left as it was."""

    kind = "rolled-back"


def _same_model(a: str, b: str) -> bool:
    # ARM ids are case-insensitive in their resource-type segments; compare without case.
    return a.strip().rstrip("/").lower() == b.strip().rstrip("/").lower()


def _live(traffic: dict[str, int]) -> list[str]:
    return sorted(name for name, pct in traffic.items() if pct > 0)


def check_request(request: DeployRequest) -> None:
    """Input checks that need no endpoint (before anything is read)."""
    if not 0 <= request.traffic <= 100:
        raise BadInput(f"--traffic {request.traffic}: a share is 0 to 100 percent",
                       hint="e.g. --traffic 10 for a canary, 100 to move everything")
    if request.mirror is not None and not 1 <= request.mirror <= MAX_MIRROR:
        raise BadInput(f"--mirror {request.mirror}: Azure ML mirrors 1 to {MAX_MIRROR} percent",
                       hint="mirrored requests are copies; the answers are discarded")
    if request.timeout <= 0:
        raise BadInput("--timeout must be more than 0 seconds", hint="e.g. --timeout 30m")


def _split_after(before: dict[str, int], new: str, share: int) -> dict[str, int]:
    """Traffic after moving `share` percent to `new`: the rest stays on what was live, in the
    proportions it had."""
    others = {name: pct for name, pct in before.items() if pct > 0 and name != new}
    rest = 100 - share
    if not others:
        if rest:
            raise BadInput(f"--traffic {share} leaves {rest}% for other deployments, and the "
                           "endpoint has no other live deployment",
                           hint="use --traffic 100 for a first deployment")
        return {new: 100}
    total = sum(others.values())
    after = {name: rest * pct // total for name, pct in others.items()}
    # Integer shares: the rounding remainder goes to the largest share, so the sum is 100.
    leftover = rest - sum(after.values())
    if leftover:
        biggest = max(after, key=lambda n: (after[n], n))
        after[biggest] += leftover
    after[new] = share
    return {name: pct for name, pct in after.items() if pct > 0 or name == new}


def _choose_name(request: DeployRequest, endpoint: EndpointInfo | None,
                 traffic_command: str = "amlpromote endpoints traffic NAME") -> str:
    traffic = endpoint.traffic if endpoint else {}
    if request.deployment:
        name = request.deployment
        if traffic.get(name, 0) > 0:
            raise BadInput(f"deployment '{name}' takes {traffic[name]}% of the traffic of "
                           f"endpoint '{request.endpoint}'; replacing it in place would touch "
                           "live traffic",
                           hint="deploy to another --deployment name (the default picks blue "
                                "or green, whichever is not live)")
        return name
    live = _live(traffic)
    for name in BLUE_GREEN:
        if name not in live:
            return name
    raise BadInput(f"both blue and green take traffic on endpoint '{request.endpoint}'",
                   hint="name the new deployment with --deployment, or move all traffic to "
                        f"one of them first (e.g. {traffic_command})")


def _unchanged(request: DeployRequest, endpoint: EndpointInfo) -> str | None:
    """The deployment that already serves this version as asked, if one does."""
    for deployment in endpoint.deployments:
        if request.deployment and deployment.name != request.deployment:
            continue
        if deployment.state.lower() != "succeeded":
            continue
        if not _same_model(deployment.model_asset_id, request.model.asset_id):
            continue
        if request.mirror is not None:
            if endpoint.mirror.get(deployment.name, 0) == request.mirror:
                return deployment.name
        elif endpoint.traffic.get(deployment.name, 0) == request.traffic:
            return deployment.name
    return None


def deploy(platform: EndpointPlatform, request: DeployRequest,
           progress: Progress = no_progress, log: Callable[[str], None] = lambda _: None,
           preflight_warnings: list[str] | None = None) -> DeployResult:
    """Run the rollout; a Ctrl-C or SIGTERM is reported as what it left behind."""
    phase = ["nothing was changed"]
    hint = [f"run the deploy again; {endpoints_command(platform, 'show ' + request.endpoint)} "
            "shows the endpoint"]
    try:
        if request.dry_run:
            return _deploy(platform, request, progress, log, preflight_warnings, phase, hint)
        with platform.reserve(request.endpoint):
            return _deploy(platform, request, progress, log, preflight_warnings, phase, hint)
    except KeyboardInterrupt as exc:
        from amlpromote.core.errors import Interrupted, interrupt_signal

        raise Interrupted(phase[0], hint=hint[0], signum=interrupt_signal(exc)) from None


def _deploy(platform: EndpointPlatform, request: DeployRequest, progress: Progress,
            log: Callable[[str], None], preflight_warnings: list[str] | None,
            phase: list[str], hint: list[str]) -> DeployResult:
    check_request(request)
    started = time.monotonic()
    deadline = started + request.timeout
    endpoint = platform.get_endpoint(request.endpoint)
    before = dict(endpoint.traffic) if endpoint else {}
    mirror_before = dict(endpoint.mirror) if endpoint else {}

    def result(status: str, name: str, after: dict[str, int], mirror_after: dict[str, int],
               **extra: Any) -> DeployResult:
        return DeployResult(status=status, platform=platform.kind, endpoint=request.endpoint,
                            deployment=name, model=request.model,
                            scoring_uri=endpoint.scoring_uri if endpoint else None,
                            traffic_before=before, traffic_after=after,
                            mirror_before=mirror_before, mirror_after=mirror_after,
                            seconds=time.monotonic() - started,
                            warnings=list(preflight_warnings or []), **extra)

    if endpoint is not None:
        if endpoint.state.lower() in ("creating", "updating", "deleting"):
            raise EndpointBusy(f"endpoint '{request.endpoint}' is {endpoint.state.lower()} "
                               "(another operation runs on it)",
                               hint="wait for it to finish and run again")
        same = _unchanged(request, endpoint)
        if same is not None:
            return result("unchanged", same, before, mirror_before)
    name = _choose_name(request, endpoint, endpoints_command(
        platform, f"traffic {request.endpoint} blue=100 green=0"))
    if request.mirror is not None:
        after = dict(before)
        if not _live(before):
            raise BadInput("--mirror needs a live deployment whose traffic is copied",
                           hint="deploy with --traffic first")
        mirror_after = {name: request.mirror}
    else:
        after = _split_after(before, name, request.traffic)
        mirror_after = {d: pct for d, pct in mirror_before.items() if d != name}
    existing = endpoint.deployment(name) if endpoint else None
    replaced = existing is not None
    if existing is not None and existing.state.lower() in ("creating", "updating", "deleting"):
        # ARM would answer the PUT 409; said before anything is made, with the likely cause.
        state = existing.state.lower()
        raise EndpointBusy(
            f"deployment {name} of endpoint '{request.endpoint}' is {state} "
            + ("(a delete of it is under way)" if state == "deleting" else
               "(another deploy, or an interrupted one, is still at work on it)"),
            hint=f"wait for it to finish ({endpoints_command(platform, 'show ' + request.endpoint)}"
                 " shows its state), then run again")
    if request.dry_run:
        return result("planned", name, after, mirror_after, created_endpoint=endpoint is None,
                      replaced_deployment=replaced)

    created_endpoint = False
    if endpoint is None:
        phase[0] = (f"endpoint {request.endpoint} was being created; it serves no model "
                    "yet")
        hint[0] = ("run the deploy again, or remove it: "
                   + endpoints_command(platform, f"delete {request.endpoint}"))
        log(f"creating endpoint {request.endpoint}")
        endpoint = platform.create_endpoint(request.endpoint, request.auth_mode, progress,
                                            deadline)
        created_endpoint = True
    spec = DeploymentSpec(endpoint=request.endpoint, name=name, model=request.model,
                          settings=request.settings)

    previous = existing  # (the endpoint read above: a new endpoint has no deployments)

    def still_previous() -> str | None:
        """The model `name` still serves when a replacement of it failed to load and the
        platform kept the one before (a local endpoint does); None otherwise."""
        if previous is None:
            return None
        now = platform.get_endpoint(request.endpoint)
        current = now.deployment(name) if now else None
        if (current is not None and current.state.lower() == "succeeded"
                and _same_model(current.model_asset_id, previous.model_asset_id)
                and not _same_model(current.model_asset_id, request.model.asset_id)):
            return current.model_asset_id
        return None

    def roll_back(reason: str, logs: str, hint: str,
                  traffic_now: dict[str, int] | None = None) -> RolledBack:
        kept = request.keep_failed
        steps = [f"traffic unchanged ({describe_traffic(before)})" if traffic_now is None
                 else f"traffic not moved by this deploy ({describe_traffic(traffic_now)})"]
        serving = still_previous()
        if serving is not None:
            # Deleting it would take away a deployment this deploy did not make.
            steps.append(f"deployment {name} still serves its previous model ({serving}), "
                         "as before")
            kept = True
        elif not kept:
            try:
                platform.delete_deployment(request.endpoint, name, progress,
                                           max(deadline, time.monotonic() + 600))
                steps.append(f"deployment {name} deleted")
                if created_endpoint:
                    platform.delete_endpoint(request.endpoint, progress,
                                             time.monotonic() + 600)
                    steps.append(f"endpoint {request.endpoint} (created by this deploy) "
                                 "deleted")
            except AmlPromoteError as exc:
                steps.append(f"deleting deployment {name} failed ({exc.message}); it takes "
                             "no traffic")
        else:
            steps.append(f"deployment {name} kept (--keep-failed)")
        error = RolledBack(f"{reason}; rolled back: " + ", ".join(steps), hint=hint)
        tail = [line for line in logs.splitlines() if line.strip()][-LOG_TAIL:]
        if tail:
            error.detail_lines = [f"last {len(tail)} log lines of deployment {name}:",
                                  *tail]
        error.document = {
            "status": "rolled_back", "endpoint": request.endpoint, "deployment": name,
            "model": request.model.as_dict(),
            "traffic": {"before": before,
                        "after": before if traffic_now is None else traffic_now},
            "logs": tail, "kept": kept,
        }
        return error

    def logs_of() -> str:
        try:
            return platform.get_logs(request.endpoint, name, LOG_TAIL)
        except AmlPromoteError as exc:
            return f"(its logs could not be read: {exc.message})"

    phase[0] = (f"deployment {name} was being created or smoke tested; it takes no traffic "
                f"(traffic unchanged: {describe_traffic(before)})")
    # The platform goes on creating it (ARM's operation, the local server's load) after we stop.
    hint[0] = (f"once {endpoints_command(platform, 'show ' + request.endpoint)} shows {name} "
               f"Succeeded or Failed, run the deploy again (it replaces {name}), or remove it: "
               + endpoints_command(platform, f"delete {request.endpoint}", name))
    log(f"creating deployment {name} for {request.model.name}/{request.model.version}")
    try:
        created = platform.create_deployment(spec, progress, deadline)
    except DeploymentFailed as exc:
        raise roll_back(f"deployment {name} failed: {exc.message}", exc.logs or logs_of(),
                        exc.hint or "fix what its logs name and deploy again") from None
    except DeploymentTimeout as exc:
        raise roll_back(f"deployment {name} did not finish: {exc.message}", logs_of(),
                        "raise --timeout, or look at the logs with "
                        + endpoints_command(platform, f"logs {request.endpoint}", name)) from None

    smoke_rows = smoke_seconds = None
    if request.smoke is not None:
        plural = "s" if request.smoke.rows != 1 else ""
        log(f"smoke test: {request.smoke.rows} row{plural} "
            f"to deployment {name}")
        try:
            # The smoke test is part of the rollout: --timeout bounds it too.
            answer = platform.invoke(request.endpoint, request.smoke.body, deployment=name,
                                     timeout=max(1.0, deadline - time.monotonic()))
            request.smoke.check(answer.status, answer.body, request.smoke.rows)
        except AmlPromoteError as exc:
            raise roll_back(f"deployment {name} failed its smoke test: {exc.message}",
                            logs_of(), "fix the model or pass --smoke-input with rows it "
                                       "accepts, and deploy again") from None
        smoke_rows, smoke_seconds = request.smoke.rows, answer.seconds

    # Another deploy or a manual traffic change may have moved traffic since this deploy read
    # it: moving it now would overwrite that with a split computed from a stale one.
    now = platform.get_endpoint(request.endpoint)
    ours = now.deployment(name) if now else None
    if now is None or _shares(now.traffic) != _shares(before) \
            or _shares(now.mirror) != _shares(mirror_before):
        seen = describe_traffic(now.traffic) if now else "the endpoint is gone"
        raise roll_back(f"the traffic of endpoint {request.endpoint} changed while this deploy "
                        f"ran (was {describe_traffic(before)}, now {seen}); it was not moved",
                        "", "another deploy or a traffic change ran at the same time; check "
                            f"{endpoints_command(platform, 'show ' + request.endpoint)} and run "
                            "again",
                        traffic_now=dict(now.traffic) if now else {})
    if ours is None or not _same_model(ours.model_asset_id, request.model.asset_id):
        # Replaced after its smoke test (another deploy to the same name): what would take
        # the traffic is not what was tested. Its new owner's rollout decides about it.
        raise OperationFailed(
            f"deployment {name} was replaced or deleted by another operation after its smoke "
            f"test; traffic not moved ({describe_traffic(before)})",
            hint="another deploy ran at the same time; check "
                 f"{endpoints_command(platform, 'show ' + request.endpoint)} and run again")
    phase[0] = (f"deployment {name} passed its smoke test; the traffic update to "
                f"{describe_traffic(after)} was under way")
    hint[0] = f"check the traffic with {endpoints_command(platform, 'show ' + request.endpoint)}"
    log(f"traffic: {describe_traffic(before)} -> {describe_traffic(after)}"
        + (f", mirror {describe_traffic(mirror_after)}" if mirror_after else ""))
    try:
        platform.set_traffic(request.endpoint, after, mirror_after, progress,
                             max(deadline, time.monotonic() + 300))
    except AmlPromoteError as exc:
        now = platform.get_endpoint(request.endpoint)
        if now is not None and now.traffic != before:
            # The update landed after all (its wait failed): the new deployment passed its
            # smoke test, so this is a deploy that worked but reported trouble.
            raise OperationFailed(f"moving traffic reported a failure ({exc.message}), but "
                                  f"the endpoint now routes {describe_traffic(now.traffic)}",
                                  hint="check with " + endpoints_command(
                                      platform, f"show {request.endpoint}")) from None
        raise roll_back(f"moving traffic to deployment {name} failed: {exc.message}",
                        "", exc.hint or "run again") from None

    phase[0] = (f"deployed: deployment {name} takes {describe_traffic(after)}; retiring "
                "older deployments was under way")
    retired: list[str] = []
    warnings = [*(preflight_warnings or []), *getattr(created, "warnings", [])]
    if request.retire_old:
        current = platform.get_endpoint(request.endpoint)
        for deployment in (current.deployments if current else []):
            if deployment.name == name or after.get(deployment.name, 0) \
                    or mirror_after.get(deployment.name, 0):
                continue
            try:
                platform.delete_deployment(request.endpoint, deployment.name, progress,
                                           time.monotonic() + 900)
                retired.append(deployment.name)
            except AmlPromoteError as exc:
                warnings.append(f"retiring deployment {deployment.name} failed: {exc.message}")
    final = platform.get_endpoint(request.endpoint) or endpoint
    return DeployResult(
        status="deployed", platform=platform.kind, endpoint=request.endpoint, deployment=name,
        model=request.model, scoring_uri=final.scoring_uri, traffic_before=before,
        traffic_after=dict(final.traffic), mirror_before=mirror_before,
        mirror_after=dict(final.mirror), created_endpoint=created_endpoint,
        replaced_deployment=replaced, retired=retired, smoke_rows=smoke_rows,
        smoke_seconds=smoke_seconds, seconds=time.monotonic() - started, warnings=warnings)


def _shares(split: dict[str, int]) -> dict[str, int]:
    """The deployments that take a share (Azure lists new ones at 0)."""
    return {d: pct for d, pct in split.items() if pct}


def describe_traffic(traffic: dict[str, int]) -> str:
    shown = [f"{name} {pct}%" for name, pct in sorted(traffic.items()) if pct]
    return ", ".join(shown) if shown else "no traffic"


def set_traffic(platform: EndpointPlatform, endpoint_name: str, traffic: dict[str, int],
                mirror: dict[str, int] | None, progress: Progress, timeout: float) \
        -> tuple[EndpointInfo, EndpointInfo]:
    """`endpoints traffic`: a manual shift or rollback; -> (before, after). A split equal to
    the endpoint's is not written (after is before)."""
    from amlpromote.core.errors import NotFound

    # The shares are checked before anything is read: a typo costs no round trip.
    total = sum(traffic.values())
    if any(not 0 <= pct <= 100 for pct in traffic.values()) or total not in (0, 100):
        raise BadInput(f"traffic shares add up to {total}%; they must add up to 100 (or 0 "
                       "for no traffic)", hint="e.g. blue=90 green=10")
    for name, pct in (mirror or {}).items():
        if not 0 <= pct <= MAX_MIRROR:
            raise BadInput(f"--mirror {name}={pct}: at most {MAX_MIRROR}% of the traffic can be "
                           "mirrored",
                           hint=f"e.g. --mirror {name}=10, or {name}=0 to stop mirroring")
    endpoint = platform.get_endpoint(endpoint_name)
    if endpoint is None:
        # Worded as every other endpoints command says it (where.require_endpoint).
        where = "on this machine" if platform.kind == "local" else "in the workspace"
        raise NotFound(f"no endpoint '{endpoint_name}' {where}",
                       hint=f"{endpoints_command(platform, 'list')} shows the endpoints")
    names = {d.name for d in endpoint.deployments}
    unknown = sorted(set(traffic) - names) + sorted(set(mirror or {}) - names)
    if unknown:
        raise NotFound(f"endpoint '{endpoint_name}' has no deployment {', '.join(unknown)}",
                       hint="its deployments: " + (", ".join(sorted(names)) or "none"))
    new_traffic = {name: traffic.get(name, 0) for name in names}
    new_mirror = dict(endpoint.mirror) if mirror is None else dict(mirror)
    for name, pct in new_mirror.items():
        if pct and new_traffic.get(name, 0):
            raise BadInput(f"deployment '{name}' cannot both take and mirror traffic",
                           hint="mirror to a deployment that takes no traffic")
    wanted, wanted_mirror = _shares(new_traffic), _shares(new_mirror)
    if wanted == _shares(endpoint.traffic) and wanted_mirror == _shares(endpoint.mirror):
        return endpoint, endpoint  # nothing to change: no update, no long-running operation
    platform.set_traffic(endpoint_name, wanted, wanted_mirror, progress,
                         time.monotonic() + timeout)
    return endpoint, platform.get_endpoint(endpoint_name) or endpoint
