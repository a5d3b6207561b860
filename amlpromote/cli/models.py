"""`amlpromote models list` and `amlpromote models show`: what a registry holds, read only."""

from __future__ import annotations

from enum import Enum
from typing import TYPE_CHECKING, Annotated, Any

import typer

from amlpromote.cli.options import (
    CredentialOpt,
    OutputOpt,
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
from amlpromote.core import config as cfg
from amlpromote.core.settings import target_options

if TYPE_CHECKING:
    from amlpromote.cli.output import Output
    from amlpromote.core.promote.inventory import ModelDetail, ModelListing, VersionDetail
    from amlpromote.core.uris import RegistryUri

HELP = """See what a registry holds: its models, their versions, and where promoted ones came from.

Reads the target (the default) or the source of a profile, or the registry named by the same
options as copy-model; changes nothing (a local store that does not exist is reported, exit 3,
never created). Without --from, the target is read, unless --source is typed on the command line
and no target option is: then the source is read.

Examples:

\b
  amlpromote models list --profile prod
  amlpromote models list --source file:///data/mlruns
  amlpromote models show uci-heart-classifier --from target --profile prod
  amlpromote models show uci-heart-classifier/3 --files -o json
"""

LIST_HELP = """List the registered models of a registry.

Each with its number of versions, latest version, aliases (where the registry has them) and,
when the latest version was promoted by amlpromote, where it came from. Every page is read;
--max N stops after N models.

Examples:

\b
  amlpromote models list --profile prod
  amlpromote models list --from source --profile prod --max 20
  amlpromote models list --registry shared-models --credential managed-identity \\
      -o json
"""

SHOW_HELP = """Show a model's versions, or one version in full.

REF is NAME (every version), NAME/VERSION, NAME@ALIAS, NAME/latest or NAME/Production (one
version, in full), or a models:/ URI of those forms. For a promoted version the provenance is
the source it was copied from, the digest, when and by which amlpromote version, and the chain of
earlier hops.

Examples:

\b
  amlpromote models show uci-heart-classifier --profile prod
  amlpromote models show uci-heart-classifier@champion --from source --profile prod
  amlpromote models show uci-heart-classifier/3 --target sqlite:///srv/reg/mlflow.db \\
      --files
  amlpromote models show fraud/7 --workspace ml-prod --resource-group rg-ml \\
      --subscription 00000000-0000-0000-0000-000000000000 -o json
"""

# The options that name a target registry (not --credential, which both sides may use).
_TARGET_FLAGS = {key: cfg.option_flag(key) for key in
                 ("target", "workspace", "resource_group", "subscription", "registry")}


class Side(str, Enum):  # noqa: UP042 -- Typer renders these choices; kept as they were
    source = "source"
    target = "target"


SideOpt = Annotated[
    Side | None,
    typer.Option("--from", case_sensitive=False,
                 help="Which side of the profile to read: source or target [default: target; "
                      "source when only --source is typed]."),
]


def register(app: typer.Typer) -> None:
    models_app = typer.Typer(name="models", help=HELP, no_args_is_help=True,
                             rich_markup_mode=None,
                             context_settings={"help_option_names": ["-h", "--help"]})
    models_app.command("list", help=LIST_HELP)(list_models)
    models_app.command("show", help=SHOW_HELP)(show_models)
    app.add_typer(models_app, name="models")


def list_models(
    ctx: typer.Context,
    side: SideOpt = None,
    source: SourceOpt = None,
    target: TargetOpt = None,
    profile: ProfileOpt = None,
    workspace: WorkspaceOpt = None,
    resource_group: ResourceGroupOpt = None,
    subscription: SubscriptionOpt = None,
    registry: RegistryOpt = None,
    credential: CredentialOpt = None,
    limit: Annotated[int | None, typer.Option(
        "--max", min=1, help="List at most this many models [default: all].")] = None,
    output: OutputOpt = None,
    quiet: QuietOpt = None,
    verbose: VerboseOpt = None,
) -> None:
    from amlpromote.cli.runner import make_output, run

    out = make_output(ctx, output, quiet, verbose)
    options = _Options(ctx, side, source, profile, target_options(
        target, workspace, resource_group, subscription, registry, credential))

    def action() -> ModelListing:
        from amlpromote.core.promote.inventory import list_models as listing

        chosen = options.side()
        return listing(options.registry_uri(out, chosen), chosen, limit)

    result = run(out, action)
    out.result(result.as_dict(), lambda: _render_listing(out, result),
               quiet_line="\n".join(m.name for m in result.models))


def show_models(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(
        metavar="REF", help="NAME (all versions), or one version: NAME/VERSION, NAME@ALIAS, "
                            "NAME/latest.", show_default=False)],
    side: SideOpt = None,
    source: SourceOpt = None,
    target: TargetOpt = None,
    profile: ProfileOpt = None,
    workspace: WorkspaceOpt = None,
    resource_group: ResourceGroupOpt = None,
    subscription: SubscriptionOpt = None,
    registry: RegistryOpt = None,
    credential: CredentialOpt = None,
    files: Annotated[bool, typer.Option(
        "--files", help="Also list the version's files (paths and sizes; nothing is "
                        "downloaded).")] = False,
    output: OutputOpt = None,
    quiet: QuietOpt = None,
    verbose: VerboseOpt = None,
) -> None:
    from amlpromote.cli.runner import make_output, run

    out = make_output(ctx, output, quiet, verbose)
    options = _Options(ctx, side, source, profile, target_options(
        target, workspace, resource_group, subscription, registry, credential))

    def action() -> ModelDetail | VersionDetail:
        from amlpromote.core.errors import BadInput
        from amlpromote.core.promote import inventory
        from amlpromote.core.refs import parse_model_ref

        model_ref = parse_model_ref(ref)
        chosen = options.side()
        uri = options.registry_uri(out, chosen)
        again = options.again(chosen)
        if _names_a_model(ref) and model_ref.latest:
            if files:
                raise BadInput("--files lists one version's files; REF names a whole model",
                               hint=f"name a version: amlpromote models show "
                                    f"{model_ref.name}/VERSION --files")
            return inventory.show_model(uri, chosen, model_ref.name, again)
        return inventory.show_version(uri, chosen, model_ref, files, again)

    result = run(out, action)
    from amlpromote.core.promote.inventory import ModelDetail

    if isinstance(result, ModelDetail):
        detail = result
        out.result(detail.as_dict(), lambda: _render_model(out, detail),
                   quiet_line="\n".join(v.version for v in detail.versions))
    else:
        version = result
        out.result(version.as_dict(), lambda: _render_version(out, version),
                   quiet_line=f"{version.name}/{version.entry.version}")


def _names_a_model(ref: str) -> bool:
    """REF is a bare NAME (or models:/NAME), not NAME/latest: show the whole model."""
    body = ref.strip()
    if body.startswith("models:"):
        body = body[len("models:"):].lstrip("/")
    return "/" not in body and "@" not in body


class _Options:
    """The registry options as typed, and which side they select."""

    def __init__(self, ctx: typer.Context, side: Side | None, source: str | None,
                 profile: str | None, targets: dict[str, str | None]) -> None:
        self.ctx = ctx
        self.chosen = side
        self.source = source
        self.profile = profile
        self.targets = targets

    def typed(self, name: str) -> bool:
        # Compared by name: Typer's public API does not export Click's ParameterSource enum.
        return getattr(self.ctx.get_parameter_source(name), "name", "") == "COMMANDLINE"

    def side(self) -> str:
        from amlpromote.core.errors import BadInput

        typed_targets = [flag for key, flag in _TARGET_FLAGS.items() if self.typed(key)]
        if self.chosen is None:
            return "source" if self.typed("source") and not typed_targets else "target"
        if self.chosen == Side.source and typed_targets:
            raise BadInput(f"{' and '.join(typed_targets)} name the target, but --from source "
                           "reads the source",
                           hint="drop them, or read the target: --from target")
        if self.chosen == Side.target and self.typed("source"):
            raise BadInput("--source names the source, but --from target reads the target",
                           hint="drop --source, or read the source: --from source")
        return self.chosen.value

    def again(self, side: str) -> str:
        """The options that name this registry again, for hints (credential-free)."""
        from amlpromote.core.uris import redact_uri

        words = [f"--from {side}"]
        if self.typed("profile") and self.profile:
            words.append(f"--profile {self.profile}")
        if side == "source" and self.typed("source") and self.source:
            words.append(f"--source {redact_uri(self.source)}")
        if side == "target":
            for key, flag in _TARGET_FLAGS.items():
                value = self.targets.get(key)
                if value and self.typed(key):
                    words.append(f"{flag} {redact_uri(value)}")
        return " ".join(words)

    def registry_uri(self, out: Output, side: str) -> RegistryUri:
        """The registry of `side`, by the precedence rule (option > environment > profile)."""
        from dataclasses import replace

        from amlpromote.core import config as cfg
        from amlpromote.core.errors import BadInput
        from amlpromote.core.settings import resolve_target
        from amlpromote.core.uris import parse_registry_uri

        profile_name = self.profile or cfg.DEFAULT_PROFILE
        values = cfg.load_config().profile(profile_name, required=self.profile is not None)
        if side == "source":
            src = cfg.resolve("source", self.source, values)
            out.debug(f"profile '{profile_name}'; source from {src.origin}")
            if not src.value:
                raise BadInput("no source registry given",
                               hint="pass --source URI, set AMLPROMOTE_SOURCE, or configure a "
                                    "profile: amlpromote configure --source URI")
            uri = parse_registry_uri(src.value, "source")
            if uri.scheme == "azureml":
                credential = cfg.resolve("credential", self.targets.get("credential"), values,
                                         "default")
                uri = replace(uri, credential=credential.value)
            return uri
        choice = resolve_target(dict(self.targets), values)
        out.debug(f"profile '{profile_name}'; target from {choice.origin}")
        if choice.kind != "uri":
            out.note(f"finding the MLflow URI of the {choice.display}")
        return choice.registry_uri()


# -- rendering ----------------------------------------------------------------------------------


def _table(*columns: str) -> Any:
    from rich.table import Table

    return Table(*columns, box=None, pad_edge=False)


def _print_table(out: Output, table: Any) -> None:
    """A table at its natural width: a URI cut or folded to fit 80 columns of a CI log could
    no longer be copied."""
    console = out.console()
    natural = console.measure(table, options=console.options.update_width(100_000)).maximum
    console.width = max(console.width, natural)
    console.print(table)


def _origin(origin: dict[str, str] | None) -> str:
    if not origin:
        return ""
    return f"{origin['name']}/{origin['version']} from {origin['uri']}"


def _aliases_cell(aliases: dict[str, str] | list[str] | None) -> str:
    if aliases is None:
        return "-"
    if isinstance(aliases, dict):
        return ", ".join(f"{alias}={version}" for alias, version in aliases.items())
    return ", ".join(aliases)


def _render_listing(out: Output, listing: ModelListing) -> None:
    if not listing.models:
        print(f"no registered models in the {listing.side} registry {listing.registry}")
        return
    count = len(listing.models)
    more = " (more not shown: --max)" if listing.truncated else ""
    print(f"{count} model{'s' if count != 1 else ''} in the {listing.side} registry "
          f"{listing.registry}{more}")
    table = _table("model", "versions", "latest", "aliases", "latest promoted from")
    for model in listing.models:
        table.add_row(model.name, str(model.versions), model.latest or "-",
                      _aliases_cell(model.aliases), _origin(model.promoted_from))
    _print_table(out, table)


def _render_model(out: Output, detail: ModelDetail) -> None:
    print(f"{detail.name} in the {detail.side} registry {detail.registry}")
    if detail.description:
        print(f"  {detail.description}")
    if not detail.versions:
        print("  (no versions)")
        return
    table = _table("version", "created", "aliases", "stage", "status", "promoted from",
                   "digest")
    for v in detail.versions:
        p = v.provenance
        origin = _origin(p.origin()) if p else ""
        if p and p.chain:
            origin += f" (+{len(p.chain) + p.chain_dropped} earlier)"
        digest = (p.digest or "")[:19] if p else ""
        table.add_row(v.version, v.created or "-", _aliases_cell(v.aliases), v.stage or "-",
                      v.status, origin, digest)
    _print_table(out, table)


def _render_version(out: Output, detail: VersionDetail) -> None:
    from amlpromote.cli.output import human_bytes

    entry = detail.entry
    print(f"{detail.name} version {entry.version} in the {detail.side} registry "
          f"{detail.registry}")
    rows = [("created", entry.created or "-"), ("status", entry.status),
            ("stage", entry.stage or "-"), ("aliases", _aliases_cell(entry.aliases) or "-"),
            ("description", detail.description or "-"), ("run", detail.run_id or "-"),
            ("stored at", detail.source or "-"),
            ("tags", ", ".join(f"{k}={v}" for k, v in detail.tags.items()) or "-")]
    p = entry.provenance
    if p is None:
        rows.append(("promoted", "no (not made by amlpromote)"))
    else:
        rows += [("promoted from", _origin(p.origin())), ("digest", p.digest or "-"),
                 ("promoted at", p.promoted_at or "-"),
                 ("by", f"amlpromote {p.tool_version}" if p.tool_version else "-")]
        if p.files is not None and p.bytes is not None:
            rows.append(("content", f"{p.files} files, {human_bytes(p.bytes)}"))
    width = max(len(key) for key, _ in rows)
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")
    if p is not None and (p.chain or p.chain_dropped):
        print("  chain (oldest first):")
        if p.chain_dropped:
            print(f"    ... {p.chain_dropped} older hop(s) not recorded")
        for hop in p.chain:
            print(f"    {hop.name}/{hop.version} in {hop.uri}  {hop.digest or ''}  "
                  f"{hop.at or ''}".rstrip())
        print(f"    {p.source_name}/{p.source_version} in {p.source_uri}  "
              f"{p.digest or ''}  {p.promoted_at or ''}".rstrip())
        print(f"    -> {detail.name}/{entry.version} (this version)")
    if detail.files is not None:
        total = sum(f.size or 0 for f in detail.files)
        print(f"  files ({len(detail.files)}, {human_bytes(total)}):")
        width = max((len(f.path) for f in detail.files), default=0)
        for f in detail.files:
            size = human_bytes(f.size) if f.size is not None else "?"
            print(f"    {f.path:<{width}}  {size:>9}")
