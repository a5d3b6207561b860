"""Registry URIs: validation, normalisation, and removing credentials before anything is shown.

A registry URI may carry secrets (`https://user:token@host`, `?sig=...` on a SAS URL). Everything
that leaves the process — output, logs, errors, tags written on a model version — goes through
`redact_uri` or `redact_text` first.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from amlpromote.core.errors import BadInput

# Query parameters that carry a secret: SAS signatures and tokens of every flavour we know.
_SECRET_QUERY_KEYS = {"sig", "signature", "token", "access_token", "code", "key", "secret",
                      "password", "client_secret", "x-ms-signature"}

SQLALCHEMY_SCHEMES = ("postgresql", "mysql", "mssql")
SUPPORTED = ("file", "sqlite", "http", "https", "databricks", "databricks-uc", "azureml",
             *SQLALCHEMY_SCHEMES)

_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<userinfo>[^/@\s]+)@")
_QUERY_SECRET = re.compile(
    r"(?P<key>[?&](?:" + "|".join(re.escape(k) for k in sorted(_SECRET_QUERY_KEYS)) + r"))="
    r"(?P<value>[^&\s\"']+)",
    re.IGNORECASE,
)
_BEARER = re.compile(r"(?P<key>\b(?:Bearer|Basic)\s+)(?P<value>[A-Za-z0-9._~+/=-]{8,})",
                     re.IGNORECASE)
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}")
_DATABRICKS_PAT = re.compile(r"\bdapi[0-9a-f]{20,}\b")


def redact_uri(uri: str) -> str:
    """Return `uri` without user info and without secret query parameters."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return redact_text(uri)
    netloc = parts.netloc
    if "@" not in netloc and not any(
            k.lower() in _SECRET_QUERY_KEYS for k, _ in parse_qsl(parts.query)):
        return uri  # nothing to remove; keep the user's spelling (sqlite:////abs/path)
    if "@" in netloc:
        netloc = netloc.rsplit("@", 1)[1]
    query = parts.query
    if query:
        kept = [(k, v) for k, v in parse_qsl(query, keep_blank_values=True)
                if k.lower() not in _SECRET_QUERY_KEYS]
        query = urlencode(kept)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_text(text: str) -> str:
    """Remove anything that looks like a credential from free text (errors, logs)."""
    text = _USERINFO.sub(lambda m: m.group("scheme"), text)
    text = _QUERY_SECRET.sub(lambda m: f"{m.group('key')}=REDACTED", text)
    text = _BEARER.sub(lambda m: f"{m.group('key')}REDACTED", text)
    text = _JWT.sub("REDACTED", text)
    return _DATABRICKS_PAT.sub("REDACTED", text)


@dataclass(frozen=True)
class RegistryUri:
    """A validated registry URI. `uri` is what MLflow gets; `display` is safe to show.

    `credential` is how to sign in to Azure for an `azureml://` registry (one of
    core.azure.CREDENTIAL_KINDS; None: default). It is not part of the registry's identity.
    """

    uri: str
    scheme: str
    credential: str | None = field(default=None, compare=False)

    @property
    def display(self) -> str:
        return redact_uri(self.uri)

    @property
    def is_local(self) -> bool:
        return self.scheme in ("file", "sqlite")

    @property
    def is_http(self) -> bool:
        return self.scheme in ("http", "https")

    @property
    def identity(self) -> str:
        """A normalised, credential-free spelling, stable across spellings of the same store."""
        if self.scheme == "file":
            return "file://" + str(local_path(self))
        if self.scheme == "sqlite":
            return "sqlite:///" + str(local_path(self))
        parts = urlsplit(self.display)
        return urlunsplit((parts.scheme, parts.netloc.lower(), parts.path.rstrip("/"),
                           parts.query, ""))


def parse_registry_uri(value: str, role: str = "registry") -> RegistryUri:
    """Validate `value` as an MLflow registry URI; bare folder paths become `file://` URIs."""
    value = value.strip()
    if not value:
        raise BadInput(f"the {role} URI is empty",
                       hint="pass e.g. sqlite:///path/mlflow.db, file:///path/mlruns or "
                            "https://mlflow.example.com")
    if value in ("databricks", "databricks-uc"):
        scheme = value
    elif "://" in value or re.match(r"^[A-Za-z][A-Za-z0-9+.-]+:[^\\]", value):
        scheme = urlsplit(value).scheme.lower()
    else:
        scheme = ""
    if not scheme:
        if not _looks_like_path(value):
            # `--target prodd`: a typo of a profile name would otherwise become a new file
            # store folder named prodd in the working directory.
            raise BadInput(f"the {role} '{value}' is neither a URI nor a path",
                           hint=f"for a profile write --profile {value}; for a folder here "
                                f"write ./{value}; for a registry URI write e.g. "
                                f"sqlite:///{value}.db or https://{value}")
        path = Path(value).expanduser()
        if path.suffix == ".db":
            return RegistryUri("sqlite:///" + str(path.resolve()), "sqlite")
        return RegistryUri(path.resolve().as_uri(), "file")
    base_scheme = scheme.split("+", 1)[0]
    if base_scheme not in SUPPORTED:
        raise BadInput(
            f"unsupported {role} URI scheme '{scheme}' in {redact_uri(value)}",
            hint="use file:///path/mlruns, sqlite:///path/mlflow.db, http(s)://host, "
                 "databricks://PROFILE, databricks-uc://PROFILE or azureml://...",
        )
    if base_scheme == "sqlite" and not value.startswith("sqlite:///"):
        raise BadInput(f"malformed sqlite URI {redact_uri(value)}",
                       hint="write sqlite:///relative/path.db or sqlite:////absolute/path.db")
    if base_scheme in ("http", "https") and not urlsplit(value).hostname:
        raise BadInput(f"the {role} URI {redact_uri(value)} has no host",
                       hint="write http(s)://HOST[:PORT]")
    if base_scheme == "file":
        return RegistryUri(local_path(RegistryUri(value, "file")).as_uri(), "file")
    if base_scheme == "sqlite":
        path = local_path(RegistryUri(value, "sqlite"))
        return RegistryUri("sqlite:///" + str(path), "sqlite")
    return RegistryUri(value, base_scheme)


def _looks_like_path(value: str) -> bool:
    """A bare value is a path only when it says so: it has a separator, starts with `.` or
    `~`, or ends in `.db` (README "Registry URIs")."""
    return ("/" in value or "\\" in value or value.startswith((".", "~"))
            or value.endswith(".db"))


def local_path(uri: RegistryUri) -> Path:
    """The absolute local path of a file store folder or a sqlite database file."""
    if uri.scheme == "file":
        parts = urlsplit(uri.uri)
        return Path(unquote(parts.netloc + parts.path) if parts.netloc not in ("", "localhost")
                    else unquote(parts.path)).expanduser().resolve()
    if uri.scheme == "sqlite":
        # sqlite:///rel.db is relative to the working directory, sqlite:////abs.db absolute.
        return Path(unquote(uri.uri[len("sqlite:///"):])).expanduser().resolve()
    raise ValueError(f"{uri.scheme} URIs have no local path")
