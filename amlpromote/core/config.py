"""Profiles and the precedence of settings: option > AMLPROMOTE_* environment > profile > default.

Profiles live in one TOML file, at `$AMLPROMOTE_CONFIG` or `config.toml` in the platform's user
config folder. It is written atomically with mode 0600 and never holds a secret: URIs with
credentials are refused, since tokens belong to the credential chain or the platform's own files.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from amlpromote.core.errors import BadInput, NotFound, OperationFailed
from amlpromote.core.uris import parse_registry_uri, redact_uri

DEFAULT_PROFILE = "default"
# Words of `amlpromote configure` that cannot be profile names.
RESERVED_PROFILE_NAMES = ("show", "list", "delete")
# The keys a profile may hold, with the environment variable that overrides each.
PROFILE_KEYS: dict[str, str] = {
    "source": "AMLPROMOTE_SOURCE",
    "target": "AMLPROMOTE_TARGET",
    # An Azure ML target named by its coordinates; its MLflow URI is discovered, not typed.
    "subscription": "AMLPROMOTE_SUBSCRIPTION",
    "resource_group": "AMLPROMOTE_RESOURCE_GROUP",
    "workspace": "AMLPROMOTE_WORKSPACE",
    "registry": "AMLPROMOTE_REGISTRY",
    "credential": "AMLPROMOTE_CREDENTIAL",
}


def option_flag(key: str) -> str:
    """The command-line option that sets a profile key (`resource_group`: `--resource-group`),
    for messages and hints that name it."""
    return "--" + key.replace("_", "-")


# The Azure ML target coordinates: a profile holds these or `target`, never both.
AZURE_TARGET_KEYS = ("subscription", "resource_group", "workspace", "registry")
CREDENTIAL_KINDS = ("default", "cli", "managed-identity", "environment", "device-code")
# Azure's own naming rules (ARM resource name limits), checked before anything is stored so a
# typo fails at `configure`, not in CI.
_NAME_RULES: dict[str, tuple[re.Pattern[str], str]] = {
    "subscription": (re.compile(r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$"),
                     "a subscription id (a GUID such as 00000000-0000-0000-0000-000000000000)"),
    "resource_group": (re.compile(r"^[-\w._()]{0,89}[-\w_()]$"),
                       "1-90 letters, digits, '-', '_', '.', '(' or ')', not ending in '.'"),
    "workspace": (re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_-]{2,32}$"),
                  "3-33 letters, digits, '-' or '_', starting with a letter or digit"),
    "registry": (re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_-]{1,32}$"),
                 "2-33 letters, digits, '-' or '_', starting with a letter or digit"),
}


def config_path() -> Path:
    """Where the profiles file lives."""
    explicit = os.environ.get("AMLPROMOTE_CONFIG")
    if explicit:
        return Path(explicit).expanduser()
    from platformdirs import user_config_dir

    return Path(user_config_dir("amlpromote", appauthor=False)) / "config.toml"


def data_dir() -> Path:
    """The folder for the embedded default registry (`$AMLPROMOTE_DATA_DIR` overrides)."""
    explicit = os.environ.get("AMLPROMOTE_DATA_DIR")
    if explicit:
        return Path(explicit).expanduser().resolve()
    from platformdirs import user_data_dir

    return Path(user_data_dir("amlpromote", appauthor=False))


def default_target_uri() -> str:
    """The embedded default target: a sqlite registry in the user data folder.

    Its artifacts go to `registry/mlflow-artifacts/` beside `registry/mlflow.db`.
    """
    return "sqlite:///" + str(data_dir() / "registry" / "mlflow.db")


@dataclass(frozen=True)
class Setting:
    """A resolved value and where it came from (option, environment, profile, default)."""

    value: str | None
    origin: str


@dataclass
class ConfigFile:
    """The parsed profiles file."""

    path: Path
    profiles: dict[str, dict[str, str]] = field(default_factory=dict)

    def profile(self, name: str, required: bool) -> dict[str, str]:
        if name in self.profiles:
            return self.profiles[name]
        if required:
            known = ", ".join(sorted(self.profiles)) or "none"
            raise NotFound(f"profile '{name}' is not in {self.path} (profiles: {known})",
                           hint=f"create it with: amlpromote configure {name} --source URI "
                                "--target URI")
        return {}


def load_config() -> ConfigFile:
    """Read the profiles file; a missing file is an empty configuration."""
    path = config_path()
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return ConfigFile(path)
    except OSError as exc:
        raise OperationFailed(f"cannot read the config file {path}: {exc.strerror}",
                              hint="check its permissions or set AMLPROMOTE_CONFIG") from exc
    try:
        data: dict[str, Any] = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise BadInput(f"the config file {path} is not valid TOML: {exc}",
                       hint="fix or delete it, then run amlpromote configure again") from exc
    # A key the tool does not know is refused rather than skipped: a typo (`tagret`) or a value
    # of the wrong type (`target = ["..."]`) would otherwise send a copy somewhere else.
    fix = f"edit {path} (or delete it and run amlpromote configure again)"
    unknown = sorted(set(data) - {"profiles"})
    if unknown:
        raise BadInput(f"unknown key '{unknown[0]}' in {path}; it holds only [profiles.NAME] "
                       "tables", hint=fix)
    profiles = data.get("profiles", {})
    if not isinstance(profiles, dict):
        raise BadInput(f"'profiles' in {path} must be a table", hint=fix)
    clean: dict[str, dict[str, str]] = {}
    for name, values in profiles.items():
        if not isinstance(values, dict):
            raise BadInput(f"profile '{name}' in {path} must be a table of settings, not "
                           f"{_toml_type(values)}", hint=fix)
        for key, value in values.items():
            if key not in PROFILE_KEYS:
                raise BadInput(f"unknown setting '{key}' in profile '{name}' of {path}",
                               hint=f"known settings: {', '.join(sorted(PROFILE_KEYS))}; {fix}")
            if not isinstance(value, str):
                raise BadInput(f"setting '{key}' in profile '{name}' of {path} must be a "
                               f"string, not {_toml_type(value)}", hint=fix)
        clean[name] = dict(values)
    return ConfigFile(path, clean)


def _toml_type(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, str):
        return "a string"
    return "a date or time"


def _toml_string(value: str) -> str:
    # JSON string escapes (\", \\, \n, \uXXXX) are all valid TOML basic-string escapes.
    return json.dumps(value, ensure_ascii=True)


def render_config(config: ConfigFile) -> str:
    lines = ["# amlpromote profiles. Written by `amlpromote configure`; holds no secrets.", ""]
    for name in sorted(config.profiles):
        lines.append(f"[profiles.{_toml_string(name)}]")
        for key in sorted(config.profiles[name]):
            lines.append(f"{key} = {_toml_string(config.profiles[name][key])}")
        lines.append("")
    return "\n".join(lines)


def save_config(config: ConfigFile) -> None:
    """Write the file atomically (temp file + rename) with mode 0600."""
    path = config.path
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(prefix=".config-", suffix=".tmp", dir=path.parent)
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(render_config(config))
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise OperationFailed(f"cannot write the config file {path}: {exc.strerror}",
                              hint="check the folder's permissions or set AMLPROMOTE_CONFIG") \
            from exc


def _carries_secret(uri: str) -> bool:
    """A password in the user info or a secret query parameter; a user name alone
    (`postgresql://promoter@db/mlflow`, the password in ~/.pgpass) is not a secret."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(uri)
        if parts.password is not None:
            return True
    except ValueError:
        return True
    host = parts.netloc.rsplit("@", 1)[-1]
    without_user = urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
    return redact_uri(without_user) != without_user


def validate_profile_value(key: str, value: str) -> str:
    """Check a value before it is stored; URIs with credentials are refused."""
    if key not in PROFILE_KEYS:
        raise BadInput(f"unknown profile setting '{key}'",
                       hint="known settings: " + ", ".join(sorted(PROFILE_KEYS)))
    if key in ("source", "target"):
        parsed = parse_registry_uri(value, role=key)
        if _carries_secret(parsed.uri):
            raise BadInput(
                f"the {key} URI carries credentials; they are never stored in the config file",
                hint="drop them from the URI and give them through MLFLOW_TRACKING_USERNAME/"
                     "MLFLOW_TRACKING_PASSWORD or MLFLOW_TRACKING_TOKEN instead",
            )
        return parsed.uri if parsed.is_local else value
    if key == "credential":
        if value not in CREDENTIAL_KINDS:
            raise BadInput(f"unknown credential '{value}'",
                           hint="choose one of: " + ", ".join(CREDENTIAL_KINDS))
        return value
    if key in _NAME_RULES:
        pattern, rule = _NAME_RULES[key]
        if not pattern.match(value):
            raise BadInput(f"'{value}' is not a valid {key.replace('_', ' ')}",
                           hint=f"expected {rule}")
    return value


def resolve(key: str, option: str | None, profile: dict[str, str],
            default: str | None = None) -> Setting:
    """Apply the precedence rule to one setting."""
    env_name = PROFILE_KEYS[key]
    env_value = os.environ.get(env_name)
    if option is not None and option != "":
        # Typer fills options from their env var too; equal values mean the env var supplied it.
        origin = f"environment {env_name}" if option == env_value else "option"
        return Setting(option, origin)
    if env_value:
        return Setting(env_value, f"environment {env_name}")
    if profile.get(key):
        return Setting(profile[key], "profile")
    return Setting(default, "default")


def check_profile_name(name: str, origin: str = "profile") -> None:
    """A name a profile can be stored and called by; `origin` names where it was given."""
    if not name or any(c in name for c in "[]\"'\n\\") or name in RESERVED_PROFILE_NAMES:
        where = "" if origin == "profile" else f" ({origin})"
        raise BadInput(f"'{name}' is not a usable profile name{where}",
                       hint="use letters, digits, '-', '_' or '.'; "
                            f"{', '.join(RESERVED_PROFILE_NAMES)} are reserved")


def save_profile(name: str, updates: dict[str, str | None]) -> tuple[ConfigFile, dict[str, str]]:
    """Set (or, with an empty value, remove) settings of one profile and write the file."""
    check_profile_name(name)
    config = load_config()
    profile = dict(config.profiles.get(name, {}))
    for key, value in updates.items():
        if value is None:
            continue
        if value == "":
            profile.pop(key, None)
        else:
            profile[key] = validate_profile_value(key, value)
    # A target is either a URI or Azure ML coordinates; the one written last replaces the other.
    if updates.get("target"):
        for key in AZURE_TARGET_KEYS:
            profile.pop(key, None)
    elif any(updates.get(k) for k in ("workspace", "registry")):
        profile.pop("target", None)
        other = "registry" if updates.get("workspace") else "workspace"
        if not updates.get(other):
            profile.pop(other, None)
    config.profiles[name] = profile
    save_config(config)
    return config, profile


def delete_profile(name: str) -> ConfigFile:
    """Remove one profile and write the file atomically; NotFound if it is not there."""
    config = load_config()
    if name not in config.profiles:
        known = ", ".join(sorted(config.profiles)) or "none"
        raise NotFound(f"profile '{name}' is not in {config.path} (profiles: {known})",
                       hint="amlpromote configure list shows the profiles; nothing was changed")
    del config.profiles[name]
    save_config(config)
    return config


def effective_settings(name: str, explicit: bool) -> dict[str, Setting]:
    """What a command would use for each setting with this profile and no options."""
    config = load_config()
    profile = config.profile(name, required=explicit)
    defaults = {"target": default_target_uri(), "credential": "default"}
    return {key: resolve(key, None, profile, defaults.get(key)) for key in PROFILE_KEYS}
