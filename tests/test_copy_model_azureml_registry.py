"""copy-model into an Azure ML *registry* (Azure ML in a box), through the CLI.

The product reaches the registry the way a user does (`--registry NAME --credential
managed-identity`, discovery, Azure Resource Manager, blob storage through the proxy).
Expectations are read independently: blobs straight from Azurite, versions from the box's own
records, and the model asset through azure-ai-ml's `MLClient(registry_name=...)`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from azureml_box import AzureMLResource
from azureml_box.testing import (
    REGISTRY,
    RESOURCE_GROUP,
    SUBSCRIPTION,
    BoxWorkspaces,
    EgressGuard,
    assert_no_secrets,
)
from support.cli import Run, cli
from support.models import register_heart_model, register_raw_model, sha256_tree, stored_folder

from amlpromote.core.registries import lineage

pytest_plugins = ["azureml_box.fixtures"]
pytestmark = pytest.mark.timeout(300)

HEART = "heart"
BIG = "big-model"
BIG_SIZE = 8 * 1024 * 1024 + 12_345  # two 8 MiB blocks, the last one partial
FORBIDDEN_REGISTRY = "reg-box-forbidden"


@dataclass(frozen=True)
class Source:
    uri: str
    root: Path


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Source:
    """A sqlite registry with the heart classifier and a model with one 8 MiB+ file."""
    root = tmp_path_factory.mktemp("registry-source")
    uri = "sqlite:///" + str(root / "mlflow.db")
    big = root / "big.bin"
    big.write_bytes(os.urandom(BIG_SIZE))
    with contextlib.chdir(root):
        register_heart_model(uri, name=HEART, alias="champion")
        register_raw_model(uri, BIG, {"MLmodel": b"flavors: {}\n", "data/big.bin": big})
    return Source(uri, root)


@pytest.fixture(scope="module")
def forbidden_registry(azureml_box: BoxWorkspaces) -> AzureMLResource:
    """A registry the box identity may not use (ARM answers 403, discovery too)."""
    return azureml_box.box.registry(SUBSCRIPTION, RESOURCE_GROUP, FORBIDDEN_REGISTRY,
                                    allowed=False, start_backend=False)


@pytest.fixture
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMLPROMOTE_RETRIES", "1")


def copy(source: Source, ref: str, name: str, *extra: str, registry: str = REGISTRY) -> Run:
    return cli("copy-model", ref, "--source", source.uri, "--registry", registry,
               "--credential", "managed-identity", "--target-name", name, "-o", "json", *extra)


def versions(box: BoxWorkspaces, name: str) -> list[dict[str, Any]]:
    return box.box.registry_versions(box.registry, name)


def sha256_files(files: dict[str, bytes]) -> dict[str, str]:
    return {path: hashlib.sha256(data).hexdigest() for path, data in files.items()}


def arm_calls(box: BoxWorkspaces, pattern: str, method: str | None = None) -> list[Any]:
    return [r for r in box.box.requests_for("arm") if re.search(pattern, r.path)
            and (method is None or r.method == method)]


# -- the main path ----------------------------------------------------------------------------


def test_heart_model_lands_byte_exact_as_an_mlflow_model_and_reruns_unchanged(
    azureml_box: BoxWorkspaces, box_env: dict[str, str], source: Source,
    unique_model_name: str, no_egress: EgressGuard,
) -> None:
    from azure.ai.ml import MLClient
    from azure.identity import ManagedIdentityCredential

    run = copy(source, f"{HEART}/1", unique_model_name, "-v")

    assert run.code == 0, run.both
    document = run.document
    assert document["status"] == "copied"
    assert document["target"]["version"] == "1"
    assert document["target"]["aliases"] == []
    assert_no_secrets(run.both, box_env)
    (version,) = versions(azureml_box, unique_model_name)
    model_uri = version["properties"]["modelUri"]
    assert version["properties"]["provisioningState"] == "Succeeded"
    expected = sha256_tree(stored_folder(source.uri, HEART))
    assert sha256_files(azureml_box.box.model_uri_files(model_uri)) == expected
    assert document["files"] == len(expected)
    # Created as a long-running operation, which the product followed to its end.
    assert arm_calls(azureml_box, r"/mfeOperationsStatus/", "GET")
    assert azureml_box.box.blocked_egress == [] and no_egress.attempts == []

    # Azure ML's view through azure-ai-ml: an MLflow model asset with its flavors and tags.
    asset = MLClient(ManagedIdentityCredential(), registry_name=REGISTRY) \
        .models.get(unique_model_name, "1")
    assert asset.type == "mlflow_model"
    assert {"python_function", "sklearn"} <= set(asset.flavors or {})
    tags = dict(asset.tags or {})
    assert tags[lineage.DIGEST] == document["source"]["digest"]
    assert tags[lineage.SOURCE_URI] == source.uri
    assert {lineage.KEY, lineage.SOURCE_NAME, lineage.SOURCE_VERSION, lineage.FILES,
            lineage.BYTES, lineage.PROMOTED_AT, lineage.TOOL_VERSION} <= set(tags)

    # A re-run finds it (same source, same digest), reads its files back and verifies them.
    azureml_box.box.clear_requests()
    again = copy(source, f"{HEART}/1", unique_model_name, "--verify")
    assert again.code == 0, again.both
    assert again.document["status"] == "unchanged"
    assert again.document["target"]["version"] == "1"
    assert again.document["verified"] is True
    assert len(versions(azureml_box, unique_model_name)) == 1
    assert arm_calls(azureml_box, r"/datareferences/", "POST")
    assert not arm_calls(azureml_box, r"/startPendingUpload$")
    assert_no_secrets(again.both, box_env)


def test_throttling_is_retried_after_retry_after_and_verify_reads_the_staged_files(
    azureml_box: BoxWorkspaces, box_env: dict[str, str], source: Source,
    unique_model_name: str,
) -> None:
    box = azureml_box.box
    box.inject_fault(route="arm", method="POST", path=r"/startPendingUpload$", status=429,
                     retry_after=1, times=1)
    box.inject_fault(route="arm", method="PUT", path=r"/models/.+/versions/1$", status=503,
                     retry_after=1, times=1)

    run = copy(source, f"{HEART}/1", unique_model_name, "--verify")

    assert run.code == 0, run.both
    assert run.document["status"] == "copied" and run.document["verified"] is True
    for pattern, method in ((r"/startPendingUpload$", "POST"), (r"/versions/1$", "PUT")):
        first, second = arm_calls(azureml_box, pattern, method)[:2]
        assert first.status in (429, 503) and second.status in (200, 201)
        assert second.started - first.started >= 0.9
    assert len(versions(azureml_box, unique_model_name)) == 1


# -- aliases, authorization, missing registries -----------------------------------------------


def test_aliases_are_refused_up_front(
    azureml_box: BoxWorkspaces, box_env: dict[str, str], source: Source,
    unique_model_name: str,
) -> None:
    for flags in (("--alias", "staging"), ("--copy-aliases",)):
        run = copy(source, f"{HEART}@champion", unique_model_name, *flags)
        assert run.code == 2, run.both
        assert "aliases" in run.stderr and "--alias" in run.stderr
        assert "Traceback" not in run.both
    assert not arm_calls(azureml_box, r"/startPendingUpload$")
    assert not azureml_box.box.requests_for("blob")
    assert versions(azureml_box, unique_model_name) == []


def test_a_forbidden_registry_is_exit_4_and_an_unknown_one_exit_3(
    azureml_box: BoxWorkspaces, box_env: dict[str, str], source: Source,
    forbidden_registry: AzureMLResource, unique_model_name: str,
) -> None:
    # By name (discovery refuses), and by its URI (Azure Resource Manager refuses).
    by_name = copy(source, f"{HEART}/1", unique_model_name, registry=FORBIDDEN_REGISTRY)
    assert by_name.code == 4, by_name.both
    by_uri = cli("copy-model", f"{HEART}/1", "--source", source.uri, "--target",
                 forbidden_registry.mlflow_uri, "--credential", "managed-identity",
                 "--target-name", unique_model_name, "-o", "json")
    assert by_uri.code == 4, by_uri.both
    assert FORBIDDEN_REGISTRY in by_uri.stderr and "managed identity" in by_uri.stderr
    assert "AuthorizationFailed" in by_uri.stderr
    assert not arm_calls(azureml_box, r"/startPendingUpload$")

    missing = copy(source, f"{HEART}/1", unique_model_name, registry="no-such-registry")
    assert missing.code == 3, missing.both
    assert "no-such-registry" in missing.stderr
    missing_uri = azureml_box.registry.mlflow_uri.replace(f"/registries/{REGISTRY}",
                                                          "/registries/no-such-registry")
    by_uri = cli("copy-model", f"{HEART}/1", "--source", source.uri, "--target", missing_uri,
                 "--credential", "managed-identity", "--target-name", unique_model_name,
                 "-o", "json")
    assert by_uri.code == 3, by_uri.both
    assert "no-such-registry" in by_uri.stderr and "not found" in by_uri.stderr
    assert "Traceback" not in by_uri.both
    assert azureml_box.box.blocked_egress == []


# -- faults and concurrency -------------------------------------------------------------------


def test_a_dropped_upload_registers_nothing_and_a_rerun_makes_one_version(
    azureml_box: BoxWorkspaces, box_env: dict[str, str], source: Source,
    unique_model_name: str, fast_retries: None,
) -> None:
    box = azureml_box.box
    # The first block of big.bin arrives; every later request for it is cut off midway.
    box.inject_fault(route="blob", method="PUT", path=r"/big\.bin$", after=1, drop=True,
                     times=None)

    failed = copy(source, f"{BIG}/1", unique_model_name, "-v")

    assert failed.code == 1, failed.both
    assert "big.bin" in failed.stderr
    assert_no_secrets(failed.both, box_env)
    assert [r for r in box.requests_for("blob") if r.fault == "drop"]
    assert versions(azureml_box, unique_model_name) == []
    assert not arm_calls(azureml_box, r"/versions/\d+$", "PUT")

    box.clear_faults()
    again = copy(source, f"{BIG}/1", unique_model_name)
    assert again.code == 0, again.both
    assert again.document["status"] == "copied"
    (version,) = versions(azureml_box, unique_model_name)
    assert version["name"] == "1"
    files = box.model_uri_files(version["properties"]["modelUri"])
    assert sha256_files(files) == sha256_tree(stored_folder(source.uri, BIG))


def test_concurrent_promotions_end_with_one_version(
    azureml_box: BoxWorkspaces, box_env: dict[str, str], source: Source,
    unique_model_name: str,
) -> None:
    from amlpromote.core.promote.promote import PromoteRequest, promote_version
    from amlpromote.core.refs import parse_model_ref
    from amlpromote.core.uris import parse_registry_uri

    # Both registrations are held until both arrived, so both runs found no version first:
    # one of them then loses the number to the other (409) and takes the winner's version.
    gate = azureml_box.box.hold(route="arm", method="PUT", path=r"/versions/\d+$", count=2)
    target = replace(parse_registry_uri(azureml_box.registry.mlflow_uri),
                     credential="managed-identity")
    request = PromoteRequest(parse_model_ref(f"{HEART}/1"), parse_registry_uri(source.uri),
                             target, target_name=unique_model_name)
    outcomes: list[Any] = []
    start = threading.Barrier(2)

    def promote() -> None:
        try:
            start.wait()
            outcomes.append(promote_version(request))
        except Exception as exc:  # recorded, asserted below
            outcomes.append(exc)

    threads = [threading.Thread(target=promote) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=240)

    assert all(not isinstance(o, Exception) for o in outcomes), outcomes
    assert gate.arrived == 2 and not gate.timed_out, gate
    (version,) = versions(azureml_box, unique_model_name)
    assert {o.target["version"] for o in outcomes} == {version["name"]}
    assert sorted(o.status for o in outcomes) == ["copied", "unchanged"]
    puts = arm_calls(azureml_box, r"/versions/\d+$", "PUT")
    assert sorted(r.status for r in puts) == [201, 409]
    assert {r.path.rsplit("/", 1)[1] for r in puts} == {"1"}
    assert not arm_calls(azureml_box, r"/versions/\d+$", "DELETE")


# -- the registry as strict as the real service (issue 9) --------------------------------------


@pytest.fixture
def registry(azureml_box: BoxWorkspaces, box_env: dict[str, str]) -> Iterator[AzureMLResource]:
    """The session registry, with the behaviours a test switches on switched off again."""
    resource = azureml_box.registry
    yield resource
    resource.copy_on_register = False
    resource.data_reference_credential = "SAS"
    resource.delete_outcome = "Succeeded"


def arm_token() -> str:
    from azure.identity import ManagedIdentityCredential

    return ManagedIdentityCredential().get_token("https://management.azure.com/.default").token


def start_pending_upload(box: BoxWorkspaces, name: str, version: str) -> str:
    """What startPendingUpload hands out to any client: the container's SAS URL."""
    import requests

    url = (f"{box.box.url}{box.registry.arm_id}/models/{name}/versions/{version}"
           "/startPendingUpload?api-version=2025-12-01")
    response = requests.post(url, json={"pendingUploadType": "TemporaryBlobReference"},
                             headers={"Authorization": f"Bearer {arm_token()}"}, timeout=30)
    assert response.status_code == 200, response.text
    return str(response.json()["blobReferenceForConsumption"]["credential"]["sasUri"])


def test_the_pending_upload_cannot_be_listed_and_a_lost_staged_file_is_caught(
    azureml_box: BoxWorkspaces, registry: AzureMLResource, source: Source,
    unique_model_name: str,
) -> None:
    import requests

    # The upload URL writes and reads blobs; listing the container is refused.
    sas_url = start_pending_upload(azureml_box, unique_model_name, "1")
    container, _, sas = sas_url.partition("?")
    listing = requests.get(f"{container}?{sas}&restype=container&comp=list", timeout=30)
    assert listing.status_code == 403, listing.text
    assert requests.head(f"{container}/nothing?{sas}", timeout=30).status_code == 404

    # Storage answers that the staged MLmodel is not there: checked blob by blob, not listed.
    azureml_box.box.inject_fault(route="blob", method="HEAD", path=r"/MLmodel$", status=404,
                                 times=None)
    run = copy(source, f"{HEART}/1", unique_model_name)

    assert run.code == 1, run.both
    assert "does not hold what was written" in run.stderr and "MLmodel" in run.stderr
    assert versions(azureml_box, unique_model_name) == []
    assert not arm_calls(azureml_box, r"/versions/\d+$", "PUT")
    assert_no_secrets(run.both, dict(os.environ))


def test_a_registry_that_moves_the_files_on_registration(
    azureml_box: BoxWorkspaces, registry: AzureMLResource, box_env: dict[str, str],
    source: Source, unique_model_name: str,
) -> None:
    registry.copy_on_register = True
    expected = sha256_tree(stored_folder(source.uri, HEART))

    run = copy(source, f"{HEART}/1", unique_model_name, "--verify")

    assert run.code == 0, run.both
    assert run.document["status"] == "copied" and run.document["verified"] is True
    (version,) = versions(azureml_box, unique_model_name)
    model_uri = version["properties"]["modelUri"]
    assert f"/{registry.blob_container}/" in model_uri  # not the pending upload's container
    assert sha256_files(azureml_box.box.model_uri_files(model_uri)) == expected
    assert version["properties"]["tags"][lineage.RUN]
    for extra in (("--verify",), ()):
        again = copy(source, f"{HEART}/1", unique_model_name, *extra)
        assert again.code == 0, again.both
        assert again.document["status"] == "unchanged"
        assert again.document["target"]["version"] == "1"
    assert again.document["verified"] is None
    assert len(versions(azureml_box, unique_model_name)) == 1
    assert_no_secrets(run.both + again.both, box_env)


def test_a_lost_version_number_is_registered_from_a_pending_upload_of_the_next(
    azureml_box: BoxWorkspaces, registry: AzureMLResource, source: Source,
    unique_model_name: str,
) -> None:
    box = azureml_box.box
    other = {"MLmodel": b"flavors: {}\n", "weights.bin": b"another model"}
    # Another client registers version 1 while this run's PUT of version 1 is on its way.
    def register_other() -> None:
        box.add_registry_version(registry, unique_model_name, "1", other)

    box.inject_fault(route="arm", method="PUT", path=rf"/models/{unique_model_name}/versions/1$",
                     times=1, before=register_other)

    run = copy(source, f"{HEART}/1", unique_model_name)

    assert run.code == 0, run.both
    assert run.document["status"] == "copied" and run.document["target"]["version"] == "2"
    first, second = versions(azureml_box, unique_model_name)
    assert sha256_files(box.model_uri_files(first["properties"]["modelUri"])) == \
        sha256_files(other)
    assert sha256_files(box.model_uri_files(second["properties"]["modelUri"])) == \
        sha256_tree(stored_folder(source.uri, HEART))
    # Version 2's files are in the pending upload handed out for version 2.
    container = second["properties"]["modelUri"].split("/")[3]
    (upload,) = [u for u in registry.pending_uploads.values() if u.container == container]
    assert (upload.name, upload.version) == (unique_model_name, "2")
    puts = arm_calls(azureml_box, r"/versions/\d+$", "PUT")
    assert [(r.path.rsplit("/", 1)[1], r.status) for r in puts] == [("1", 409), ("2", 201)]
    uploads = arm_calls(azureml_box, r"/startPendingUpload$", "POST")
    assert [r.path.split("/")[-2] for r in uploads] == ["1", "2"]


def test_archived_versions_keep_their_numbers_and_are_not_the_promotion(
    azureml_box: BoxWorkspaces, registry: AzureMLResource, source: Source,
    unique_model_name: str,
) -> None:
    box = azureml_box.box
    assert copy(source, f"{BIG}/1", unique_model_name).code == 0
    first = copy(source, f"{HEART}/1", unique_model_name)
    assert first.code == 0 and first.document["target"]["version"] == "2", first.both
    box.set_registry_version_archived(registry, unique_model_name, "2")
    box.clear_requests()

    run = copy(source, f"{HEART}/1", unique_model_name)

    # The archived version holds number 2, and a retired version is not "already promoted".
    assert run.code == 0, run.both
    assert run.document["status"] == "copied" and run.document["target"]["version"] == "3"
    states = [(v["name"], v["properties"]["isArchived"])
              for v in versions(azureml_box, unique_model_name)]
    assert states == [("1", False), ("2", True), ("3", False)]
    listings = arm_calls(azureml_box, rf"/models/{unique_model_name}/versions$", "GET")
    assert listings and all(r.query.get("listViewType") == "All" for r in listings)


def test_a_duplicate_is_deleted_to_the_end_of_its_operation_and_a_failed_delete_says_so(
    azureml_box: BoxWorkspaces, registry: AzureMLResource, box_env: dict[str, str],
    source: Source, unique_model_name: str,
) -> None:
    box = azureml_box.box
    assert copy(source, f"{HEART}/1", unique_model_name).code == 0

    def run_while_restored() -> Run:
        # Version 1 holds this promotion but is archived, so the run registers version 2; a
        # user restores version 1 meanwhile, and the run removes its duplicate.
        box.set_registry_version_archived(registry, unique_model_name, "1")
        box.clear_requests()
        box.inject_fault(route="arm", method="PUT",
                         path=rf"/models/{unique_model_name}/versions/2$", times=1,
                         before=lambda: box.set_registry_version_archived(
                             registry, unique_model_name, "1", False))
        return copy(source, f"{HEART}/1", unique_model_name)

    removed = run_while_restored()

    assert removed.code == 0, removed.both
    assert removed.document["status"] == "unchanged"
    assert removed.document["target"]["version"] == "1"
    assert [v["name"] for v in versions(azureml_box, unique_model_name)] == ["1"]
    (delete,) = arm_calls(azureml_box, r"/versions/2$", "DELETE")
    assert delete.status == 202
    polls = arm_calls(azureml_box, r"/mfeOperationResults/", "GET")
    assert polls and polls[-1].status == 204

    registry.delete_outcome = "Failed"
    failed = run_while_restored()

    assert failed.code == 1, failed.both
    assert "version 2 duplicates version 1" in failed.stderr
    assert "operation failed" in failed.stderr and "UserError" in failed.stderr
    assert "az ml model archive" in failed.stderr
    assert "Traceback" not in failed.both
    assert [v["name"] for v in versions(azureml_box, unique_model_name)] == ["1", "2"]
    assert_no_secrets(removed.both + failed.both, box_env)


def test_verify_reads_a_version_whose_data_reference_carries_no_credential(
    azureml_box: BoxWorkspaces, registry: AzureMLResource, box_env: dict[str, str],
    source: Source, unique_model_name: str,
) -> None:
    import requests

    assert copy(source, f"{HEART}/1", unique_model_name).code == 0
    (version,) = versions(azureml_box, unique_model_name)
    mlmodel = version["properties"]["modelUri"] + "/MLmodel"
    assert requests.get(mlmodel, timeout=30).status_code in (403, 404)  # private until then
    registry.data_reference_credential = "NoCredentials"
    azureml_box.box.clear_requests()

    run = copy(source, f"{HEART}/1", unique_model_name, "--verify")

    assert run.code == 0, run.both
    assert run.document["status"] == "unchanged" and run.document["verified"] is True
    assert arm_calls(azureml_box, r"/datareferences/", "POST")
    assert requests.get(mlmodel, timeout=30).status_code == 200  # readable without a SAS
    assert_no_secrets(run.both, box_env)
