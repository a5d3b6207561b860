"""Parsing of model references and registry URIs, and credential redaction."""

from __future__ import annotations

import pytest

from amlpromote.core.errors import BadInput
from amlpromote.core.refs import ModelRef, parse_model_ref
from amlpromote.core.uris import parse_registry_uri, redact_text, redact_uri


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("heart", ModelRef("heart", latest=True)),
        ("heart/3", ModelRef("heart", version="3")),
        ("heart@champion", ModelRef("heart", alias="champion")),
        ("heart/latest", ModelRef("heart", latest=True)),
        ("heart/production", ModelRef("heart", stage="Production")),
        ("models:/heart/3", ModelRef("heart", version="3")),
        ("models:/heart@champion", ModelRef("heart", alias="champion")),
        ("models:/cat.schema.heart/12", ModelRef("cat.schema.heart", version="12")),
        # Unity Catalog three-part names, in every form copy-model accepts.
        ("catalog.schema.model/3", ModelRef("catalog.schema.model", version="3")),
        ("catalog.schema.model@champion", ModelRef("catalog.schema.model", alias="champion")),
        ("catalog.schema.model", ModelRef("catalog.schema.model", latest=True)),
        ("catalog.schema.model/latest", ModelRef("catalog.schema.model", latest=True)),
        ("models:/catalog.schema.model/3", ModelRef("catalog.schema.model", version="3")),
        ("models:/catalog.schema.model@champion",
         ModelRef("catalog.schema.model", alias="champion")),
    ],
)
def test_model_refs(text: str, expected: ModelRef) -> None:
    assert parse_model_ref(text) == expected


@pytest.mark.parametrize(
    "text", ["", "heart/", "heart/0", "heart/x1", "@a", "heart@", "models:/m-0123abc",
             "heart//1", "a//b/latest", "runs:/abc/model"]
)
def test_bad_model_refs(text: str) -> None:
    with pytest.raises(BadInput):
        parse_model_ref(text)


def test_registry_uris(tmp_path: object) -> None:
    assert parse_registry_uri("sqlite:////abs/x.db").uri == "sqlite:////abs/x.db"
    assert parse_registry_uri("/abs/x.db").uri == "sqlite:////abs/x.db"
    assert parse_registry_uri("/abs/mlruns").uri == "file:///abs/mlruns"
    assert parse_registry_uri("databricks://prod").scheme == "databricks"
    assert parse_registry_uri("databricks").scheme == "databricks"
    assert parse_registry_uri("databricks-uc").scheme == "databricks-uc"
    uc = parse_registry_uri("databricks-uc://prod")
    assert (uc.scheme, uc.uri, uc.display) == ("databricks-uc", "databricks-uc://prod",
                                               "databricks-uc://prod")
    assert parse_registry_uri("https://u:secret@h:5000").display == "https://h:5000"
    same = {
        parse_registry_uri(u).identity
        for u in ("sqlite:////abs/x.db", "/abs/x.db", "sqlite:////abs/./x.db")
    }
    assert same == {"sqlite:////abs/x.db"}
    for bad in ("ftp://x", "s3://bucket/x", "sqlite://relative.db", "https://", "  "):
        with pytest.raises(BadInput):
            parse_registry_uri(bad)


def test_redaction() -> None:
    assert redact_uri("https://user:tok@host/x?sig=abc&sv=1") == "https://host/x?sv=1"
    text = (
        "GET https://acct.blob.core.windows.net/c/b?sv=2024&sig=SeCrEt%3D "
        "Authorization: Bearer eyJhbGciOi.eyJzdWIiOiJ4In0.c2lnbmF0dXJl "
        "dapi0123456789abcdef0123456789ab http://me:pw@127.0.0.1:5000/api"
    )
    out = redact_text(text)
    for secret in ("SeCrEt", "eyJhbGciOi", "dapi0123456789", "me:pw"):
        assert secret not in out
    assert "https://acct.blob.core.windows.net/c/b?sv=2024&sig=REDACTED" in out
