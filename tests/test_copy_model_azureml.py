"""copy-model into an Azure ML workspace (Azure ML in a box), through the CLI.

The product talks to the box exactly as it would to Azure: the workspace's `azureml://` MLflow
URI (or its coordinates), the managed-identity token endpoint, the artifact services, blob storage
through the proxy, the test CA — nothing else. Expectations are read independently of the
product: blobs straight from Azurite, versions from the workspace's backing `mlflow server`,
model assets through azure-ai-ml, and the model loaded back with plain MLflow in a fresh process.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from azureml_box import AzureMLResource
from azureml_box.testing import (
    RESOURCE_GROUP,
    SUBSCRIPTION,
    WORKSPACE,
    BoxWorkspaces,
    EgressGuard,
    assert_no_secrets,
)
from support.cli import Run, cli, run_cli_reporting_imports
from support.models import register_heart_model, register_raw_model, sha256_tree, stored_folder
from support.staging import start_cli

from amlpromote.core.registries import lineage
from amlpromote.core.registries.lineage import AZURE_ML_TAG_LIMITS

pytest_plugins = ["azureml_box.fixtures"]
pytestmark = pytest.mark.timeout(300)

HEART = "heart"
BIG = "big-model"
BIG_SIZE = 20 * 1024 * 1024 + 12_345  # three 8 MiB blocks, the last one partial
TAGGED = "tagged-model"
LOAD_SCRIPT = """
import json, sys
import numpy, pandas
import mlflow, mlflow.pyfunc
mlflow.set_tracking_uri(sys.argv[1])
mlflow.set_registry_uri(sys.argv[1])
model = mlflow.pyfunc.load_model(sys.argv[2])
print(json.dumps(numpy.asarray(model.predict(pandas.read_pickle(sys.argv[3]))).tolist()))
"""


@dataclass(frozen=True)
class Source:
    uri: str
    root: Path


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Source:
    """A sqlite registry with the heart classifier, a 20 MiB model and a heavily tagged one."""
    root = tmp_path_factory.mktemp("azureml-source")
    uri = "sqlite:///" + str(root / "mlflow.db")
    big = root / "big.bin"
    with big.open("wb") as handle:
        handle.write(os.urandom(BIG_SIZE))
    # Tags over Azure ML's limits, and a provenance chain of many earlier hops.
    hops = [{"uri": f"https://registry-{i}.example.com/{'p' * 60}", "name": "m", "version": str(i),
             "digest": "sha256:" + "0" * 64, "at": "2026-01-01T00:00:00Z"} for i in range(8)]
    tags = {f"team.tag{i:02d}": f"value-{i}" for i in range(60)}
    tags.update({"k" * 150: "long key", "long.value": "v" * 2000,
                 lineage.SOURCE_URI: "https://previous.example.com", lineage.SOURCE_NAME: "m",
                 lineage.SOURCE_VERSION: "9", lineage.CHAIN: json.dumps(hops)})
    with contextlib.chdir(root):
        register_heart_model(uri, name=HEART, alias=None)
        register_raw_model(uri, BIG, {"MLmodel": b"flavors: {}\n", "data/big.bin": big,
                                      "empty.txt": b""})
        register_raw_model(uri, TAGGED, {"MLmodel": b"flavors: {}\n", "x.txt": b"x"}, tags=tags)
    return Source(uri, root)


# -- helpers --------------------------------------------------------------------------------------


def copy(source: Source, ref: str, target: str, name: str, *extra: str) -> Run:
    return cli("copy-model", ref, "--source", source.uri, "--target", target,
               "--target-name", name, "-o", "json", *extra)


def backend_client(workspace: AzureMLResource) -> Any:
    from mlflow import MlflowClient

    assert workspace.backend is not None
    return MlflowClient(tracking_uri=workspace.backend.url, registry_uri=workspace.backend.url)


def versions_in(workspace: AzureMLResource, name: str) -> list[Any]:
    return list(backend_client(workspace).search_model_versions(f"name='{name}'"))


def run_of(version: Any) -> str:
    found = re.search(r"/runs/([^/]+)/artifacts/model$", version.source)
    assert found, version.source
    return found.group(1)


def blob_files(box: BoxWorkspaces, run_id: str) -> dict[str, str]:
    """sha256 by relative path of every blob Azurite holds for the run's model folder."""
    prefix = f"ExperimentRun/dcid.{run_id}/model/"
    return {name[len(prefix):]: hashlib.sha256(box.box.read_blob(box.workspace, name)).hexdigest()
            for name in box.box.blob_names(box.workspace, prefix=prefix)}


def concurrency(records: list[Any]) -> int:
    """The most requests of `records` that were in flight at the same moment."""
    events = sorted(itertools.chain.from_iterable(
        ((r.started, 1), (r.started + r.duration, -1)) for r in records),
        key=lambda e: (e[0], e[1]))
    peak = level = 0
    for _, step in events:
        level += step
        peak = max(peak, level)
    return peak


@pytest.fixture
def ws_uri(box_workspace: AzureMLResource) -> str:
    return box_workspace.mlflow_uri


@pytest.fixture
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("AMLPROMOTE_RETRIES", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    yield


# -- the main path ----------------------------------------------------------------------------


def test_heart_model_lands_byte_exact_as_an_mlflow_model_and_loads_back(
    azureml_box: BoxWorkspaces, box_env: dict[str, str], ws_uri: str, source: Source,
    unique_model_name: str, heart_frame: Any, tmp_path: Path, no_egress: EgressGuard,
) -> None:
    import mlflow.pyfunc
    from azure.ai.ml import MLClient
    from azure.identity import ManagedIdentityCredential

    box = azureml_box.box
    run = copy(source, f"{HEART}/1", ws_uri, unique_model_name, "-v")

    assert run.code == 0, run.both
    document = run.document
    assert document["status"] == "copied"
    assert document["target"]["version"] == "1"
    assert_no_secrets(run.both, box_env)
    (version,) = versions_in(azureml_box.workspace, unique_model_name)
    expected = sha256_tree(stored_folder(source.uri, HEART))
    assert blob_files(azureml_box, run_of(version)) == expected
    assert document["files"] == len(expected)
    # Staged through a run on purpose: no LoggedModel endpoint was even tried.
    assert not [r for r in box.requests_for("mlflow") if "logged-models" in r.path]
    assert box.blocked_egress == [] and no_egress.attempts == []

    # Azure ML's view: an MLflow model asset with the flavors of its MLmodel.
    asset = MLClient(ManagedIdentityCredential(), SUBSCRIPTION, RESOURCE_GROUP, WORKSPACE) \
        .models.get(unique_model_name, "1")
    assert asset.type == "mlflow_model"
    assert {"python_function", "sklearn"} <= set(asset.flavors or {})
    tags = dict(asset.tags or {})
    assert tags[lineage.DIGEST] == document["source"]["digest"]
    assert tags[lineage.SOURCE_URI] == source.uri
    assert {lineage.KEY, lineage.SOURCE_NAME, lineage.SOURCE_VERSION, lineage.FILES,
            lineage.BYTES, lineage.PROMOTED_AT, lineage.TOOL_VERSION} <= set(tags)

    # A consumer with nothing but the workspace URI and the box's environment loads it back.
    frame = heart_frame.head(25)
    frame.to_pickle(tmp_path / "frame.pkl")
    (tmp_path / "load.py").write_text(LOAD_SCRIPT)
    proc = subprocess.run(
        [sys.executable, str(tmp_path / "load.py"), ws_uri, f"models:/{unique_model_name}/1",
         str(tmp_path / "frame.pkl")],
        env=box.client_env(dict(os.environ)), cwd=tmp_path, capture_output=True, text=True,
        timeout=180, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    predicted = json.loads(proc.stdout.strip().splitlines()[-1])
    local = mlflow.pyfunc.load_model(str(stored_folder(source.uri, HEART)))
    assert predicted == local.predict(frame).tolist()

    # A re-run finds it (same source, same digest) and verifies it.
    again = copy(source, f"{HEART}/1", ws_uri, unique_model_name, "--verify")
    assert again.code == 0, again.both
    assert again.document["status"] == "unchanged"
    assert again.document["verified"] is True
    assert len(versions_in(azureml_box.workspace, unique_model_name)) == 1


def test_a_large_file_goes_up_in_parallel_blocks(
    azureml_box: BoxWorkspaces, box_env: dict[str, str], ws_uri: str, source: Source,
    unique_model_name: str,
) -> None:
    box = azureml_box.box
    box.inspect_blobs = True  # record every blob request
    # One block is throttled: it alone is sent again, after the Retry-After delay.
    box.inject_fault(route="blob", method="PUT", path=r"/big\.bin$", status=429, retry_after=1,
                     after=1, times=1)
    try:
        run = copy(source, f"{BIG}/1", ws_uri, unique_model_name, "--verify")
    finally:
        box.inspect_blobs = False

    assert run.code == 0, run.both
    assert run.document["verified"] is True
    (version,) = versions_in(azureml_box.workspace, unique_model_name)
    assert blob_files(azureml_box, run_of(version)) == sha256_tree(stored_folder(source.uri, BIG))
    blob = f"ExperimentRun/dcid.{run_of(version)}/model/data/big.bin"
    container = box._blob_service_client().get_container_client(
        azureml_box.workspace.blob_container)
    committed, _ = container.get_blob_client(blob).get_block_list("committed")
    assert [b.size for b in committed] == [8 << 20, 8 << 20, BIG_SIZE - (16 << 20)]
    blocks = [r for r in box.requests_for("blob")
              if r.method == "PUT" and r.query.get("comp") == "block"]
    (throttled,) = [r for r in blocks if r.status == 429]
    (retried,) = [r for r in blocks if r.query["blockid"] == throttled.query["blockid"]
                  and r.status == 201]
    assert retried.started - throttled.started >= 0.9
    assert len(blocks) == 4 and sum(r.status == 201 for r in blocks) == 3
    assert concurrency(blocks) >= 2, "blocks of one file were uploaded one after another"
    # The file itself was not started again, and the upload URLs of all three files came from
    # one batch call.
    assert len([r for r in box.requests_for("artifact") if r.method == "POST"]) == 1
    # Small files are one Put Blob each; the big one is committed once.
    assert [r.query.get("comp") for r in box.requests_for("blob")
            if r.method == "PUT" and r.path.endswith("big.bin")].count("blocklist") == 1
    assert all(r.query.get("sig") == "<redacted>" for r in blocks)


# -- faults -----------------------------------------------------------------------------------


def test_throttling_is_retried_after_retry_after(
    azureml_box: BoxWorkspaces, box_env: dict[str, str], ws_uri: str, source: Source,
    unique_model_name: str,
) -> None:
    box = azureml_box.box
    box.inject_fault(route="artifact", method="POST", status=429, retry_after=1, times=1)
    box.inject_fault(route="blob", method="PUT", path=r"/MLmodel$", status=503, retry_after=1,
                     times=1)
    box.inject_fault(route="mlflow", path=r"/model-versions/create$", status=429, retry_after=1,
                     times=1)

    # One file at a time, so each retry follows the request it repeats.
    run = copy(source, f"{HEART}/1", ws_uri, unique_model_name, "--parallel", "1")

    assert run.code == 0, run.both
    assert run.document["status"] == "copied"
    posts = [r for r in box.requests_for("artifact") if r.method == "POST"]
    assert posts[0].status == 429 and posts[1].status == 200
    assert posts[1].started - posts[0].started >= 0.9
    mlmodel = [r for r in box.requests_for("blob") if r.path.endswith("/MLmodel")]
    assert [r.status for r in mlmodel[:2]] == [503, 201]
    assert mlmodel[1].started - mlmodel[0].started >= 0.9
    creates = [r for r in box.requests_for("mlflow") if r.path.endswith("/model-versions/create")]
    assert [r.status for r in creates] == [429, 200]
    assert len(versions_in(azureml_box.workspace, unique_model_name)) == 1


def test_a_dropped_upload_registers_nothing_and_a_rerun_completes(
    azureml_box: BoxWorkspaces, box_env: dict[str, str], ws_uri: str, source: Source,
    unique_model_name: str, fast_retries: None,
) -> None:
    box = azureml_box.box
    # The first block of big.bin arrives; every later request for it is cut off midway.
    box.inject_fault(route="blob", method="PUT", path=r"/big\.bin$", after=1, drop=True,
                     times=None)

    failed = copy(source, f"{BIG}/1", ws_uri, unique_model_name, "-v")

    assert failed.code == 1, failed.both
    assert "big.bin" in failed.stderr
    assert_no_secrets(failed.both, box_env)
    assert [r for r in box.requests_for("blob") if r.fault == "drop"]
    assert versions_in(azureml_box.workspace, unique_model_name) == []
    staging = backend_client(azureml_box.workspace).search_runs(
        [backend_client(azureml_box.workspace).get_experiment_by_name("amlpromote")
         .experiment_id], f"attributes.run_name = 'amlpromote-{unique_model_name}-v1'")
    assert [r.info.status for r in staging] == ["FAILED"]

    box.clear_faults()
    again = copy(source, f"{BIG}/1", ws_uri, unique_model_name)
    assert again.code == 0, again.both
    assert again.document["status"] == "copied"
    (version,) = versions_in(azureml_box.workspace, unique_model_name)
    assert blob_files(azureml_box, run_of(version)) == sha256_tree(stored_folder(source.uri, BIG))


def test_two_racing_processes_end_with_one_version_and_the_loser_reports_it(
    azureml_box: BoxWorkspaces, box_env: dict[str, str], ws_uri: str, source: Source,
    unique_model_name: str, tmp_path: Path,
) -> None:
    box = azureml_box.box
    # Both runs must be past their "is this promotion there already?" search before either
    # registers: the box holds every version create until both arrived, then lets both go.
    gate = box.hold(route="mlflow", method="POST", path=r"/model-versions/create$", count=2)
    procs = [start_cli("copy-model", f"{HEART}/1", "--source", source.uri, "--target", ws_uri,
                       "--target-name", unique_model_name, "-o", "json", cwd=tmp_path,
                       env=box.env())
             for _ in range(2)]
    outputs = [proc.communicate(timeout=240) for proc in procs]

    for proc, (stdout, stderr) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, f"{stdout}{stderr}"
    assert not gate.timed_out and gate.arrived == 2, "the race was not forced"
    creates = [r for r in box.requests_for("mlflow")
               if r.path.endswith("/model-versions/create")]
    assert [(r.status, r.fault) for r in creates] == [(200, "held")] * 2
    (version,) = versions_in(azureml_box.workspace, unique_model_name)
    documents = [json.loads(stdout) for stdout, _ in outputs]
    by_status = {d["status"]: d for d in documents}
    assert sorted(by_status) == ["copied", "unchanged"], documents
    # The loser names the winner's version, the one that is left; it deleted its own.
    assert by_status["copied"]["target"]["version"] == version.version
    assert by_status["unchanged"]["target"]["version"] == version.version
    deletes = [r for r in box.requests_for("mlflow")
               if r.path.endswith("/model-versions/delete")]
    assert [r.status for r in deletes] == [200]
    # The winner's staging run is the version's; the loser's is FAILED (Azure ML keeps a run's
    # files: README "Azure ML workspace targets").
    client = backend_client(azureml_box.workspace)
    experiment = client.get_experiment_by_name("amlpromote")
    staged = {r.info.run_id: r.info.status for r in client.search_runs(
        [experiment.experiment_id],
        f"attributes.run_name = 'amlpromote-{unique_model_name}-v1'")}
    assert staged.pop(run_of(version)) == "FINISHED"
    assert list(staged.values()) == ["FAILED"]


# -- authentication, authorization, missing workspaces ----------------------------------------


def test_no_token_is_an_auth_failure_naming_the_identity(
    azureml_box: BoxWorkspaces, box_env: dict[str, str], ws_uri: str, source: Source,
    unique_model_name: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("IDENTITY_HEADER", "not-the-box-header-0123456789")

    run = copy(source, f"{HEART}/1", ws_uri, unique_model_name)

    assert run.code == 4, run.both
    assert "Traceback" not in run.both
    run = copy(source, f"{HEART}/1", ws_uri, unique_model_name, "-v")
    assert run.code == 4, run.both
    assert "DefaultAzureCredential" in run.stderr and "X-IDENTITY-HEADER" in run.stderr
    assert "az login" in run.stderr  # the hint names what to do
    assert "not-the-box-header-0123456789" not in run.both
    assert_no_secrets(run.both, box_env)
    # Never a browser or a device-code prompt: nothing but the token endpoint was tried.
    assert azureml_box.box.blocked_egress == []
    assert versions_in(azureml_box.workspace, unique_model_name) == []


def test_an_identity_of_another_tenant_is_refused(
    azureml_box: BoxWorkspaces, box_env: dict[str, str], ws_uri: str, source: Source,
    unique_model_name: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    stranger = azureml_box.box.add_identity(f"other-tenant-{uuid.uuid4().hex[:6]}",
                                            tenant_id=str(uuid.uuid4()))
    monkeypatch.setenv("AZURE_CLIENT_ID", stranger.client_id)

    run = copy(source, f"{HEART}/1", ws_uri, unique_model_name)
    assert run.code == 4, run.both
    assert "InvalidAuthenticationTokenTenant" in run.stderr

    # Through discovery (--workspace), Azure Resource Manager says the same.
    run = cli("copy-model", f"{HEART}/1", "--source", source.uri, "--workspace", WORKSPACE,
              "--resource-group", RESOURCE_GROUP, "--subscription", SUBSCRIPTION,
              "--target-name", unique_model_name, "-o", "json")
    assert run.code == 4, run.both
    assert "tenant" in run.stderr
    assert versions_in(azureml_box.workspace, unique_model_name) == []


def test_a_forbidden_workspace_is_exit_4_and_a_missing_one_exit_3(
    azureml_box: BoxWorkspaces, box_env: dict[str, str], source: Source,
    unique_model_name: str,
) -> None:
    forbidden = copy(source, f"{HEART}/1", azureml_box.forbidden.mlflow_uri, unique_model_name)
    assert forbidden.code == 4, forbidden.both
    assert "AuthorizationFailed" in forbidden.stderr

    missing_uri = azureml_box.workspace.mlflow_uri.replace(f"/workspaces/{WORKSPACE}",
                                                           "/workspaces/no-such-ws")
    missing = copy(source, f"{HEART}/1", missing_uri, unique_model_name)
    assert missing.code == 3, missing.both
    assert "no-such-ws" in missing.stderr

    by_name = cli("copy-model", f"{HEART}/1", "--source", source.uri, "--workspace",
                  "no-such-ws", "--resource-group", RESOURCE_GROUP, "--subscription",
                  SUBSCRIPTION, "--credential", "managed-identity", "-o", "json")
    assert by_name.code == 3, by_name.both
    assert "no-such-ws" in by_name.stderr and RESOURCE_GROUP in by_name.stderr
    assert azureml_box.box.blocked_egress == []


def test_each_registry_signs_in_with_its_own_credential_and_leaves_nothing_behind(
    azureml_box: BoxWorkspaces, box_env: dict[str, str], ws_uri: str,
) -> None:
    from azureml.mlflow._internal.service_context_loader import _AzureMLServiceContextLoader

    from amlpromote.core.errors import AuthFailed
    from amlpromote.core.registries.registry import MlflowRegistry
    from amlpromote.core.uris import RegistryUri

    cache = _AzureMLServiceContextLoader._tracking_uri_to_service_context
    before = dict(cache)
    good = MlflowRegistry(RegistryUri(ws_uri, "azureml", credential="managed-identity"))
    bad = MlflowRegistry(RegistryUri(ws_uri, "azureml", credential="environment"))

    good.call("listing models", good.client.search_registered_models, max_results=1)
    with pytest.raises(AuthFailed) as refused:
        bad.call("listing models", bad.client.search_registered_models, max_results=1)
    good.call("listing models", good.client.search_registered_models, max_results=1)

    assert "service principal" in refused.value.message
    assert refused.value.hint and "AZURE_CLIENT_SECRET" in refused.value.hint
    # The same workspace, two credentials, one process: the failed one did not taint the other,
    # every MLflow call carried the managed identity's token, and azureml-mlflow's process-wide
    # state (which other code in the process may use) is as it was.
    mlflow_calls = azureml_box.box.requests_for("mlflow")
    assert len(mlflow_calls) == 2
    assert {r.identity for r in mlflow_calls} == {azureml_box.box.identity.name}
    assert dict(cache) == before


def test_a_promotion_into_a_workspace_never_imports_mlflow(
    azureml_box: BoxWorkspaces, box_env: dict[str, str], ws_uri: str,
    mlflow_server: Any, unique_model_name: str, tmp_path: Path,
) -> None:
    # From a plain MLflow server into Azure ML, both ends are spoken to over REST; importing
    # mlflow (or azureml-mlflow, which imports it) would cost seconds and ~200 MB per run.
    with contextlib.chdir(tmp_path):
        version = register_heart_model(mlflow_server.url, name=unique_model_name, alias=None)
    run = run_cli_reporting_imports(
        "copy-model", f"{unique_model_name}/{version}", "--source", mlflow_server.url,
        "--target", ws_uri, "--verify", "-o", "json", env=box_env, timeout=240)

    assert run.code == 0, run.stdout + run.stderr
    assert not any(run.imported.values()), run.imported
    document = json.loads(run.stdout)
    assert document["target"]["version"] == "1"
    (registered,) = versions_in(azureml_box.workspace, unique_model_name)
    assert registered.tags[lineage.SOURCE_VERSION] == str(version)


def test_a_token_is_reused_until_shortly_before_it_expires() -> None:
    # Some credentials are slow per token (the Azure CLI runs `az` each time); a copy makes
    # hundreds of calls, so the connection keeps a token while it has minutes left.
    import time

    from azure.core.credentials import AccessToken

    from amlpromote.core.azure.connection import AzureMlConnection, AzureMlScope, NamedCredential

    class CountingCredential:
        def __init__(self, lifetime: float) -> None:
            self.lifetime = lifetime
            self.scopes: list[str] = []

        def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
            self.scopes.extend(scopes)
            return AccessToken(f"token-{len(self.scopes)}", int(time.time() + self.lifetime))

    scope = AzureMlScope.parse(f"azureml://westeurope.api.azureml.ms/mlflow/v2.0/subscriptions/"
                               f"{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}/providers/"
                               f"Microsoft.MachineLearningServices/workspaces/{WORKSPACE}")
    lasting = CountingCredential(lifetime=3600)
    connection = AzureMlConnection(scope, NamedCredential(lasting, "default"))
    assert [connection.authorization() for _ in range(3)] == ["Bearer token-1"] * 3
    assert lasting.scopes == ["https://management.azure.com/.default"]

    expiring = CountingCredential(lifetime=60)  # inside the refresh margin: never reused
    connection = AzureMlConnection(scope, NamedCredential(expiring, "default"))
    assert [connection.authorization() for _ in range(2)] == ["Bearer token-1", "Bearer token-2"]


def test_device_code_needs_a_terminal_and_unknown_kinds_are_refused() -> None:
    from amlpromote.core.azure.connection import make_credential
    from amlpromote.core.errors import BadInput

    with pytest.raises(BadInput, match="interactive terminal") as no_tty:
        make_credential("device-code")
    assert no_tty.value.hint and "environment" in no_tty.value.hint
    with pytest.raises(BadInput, match="unknown credential") as unknown:
        make_credential("browser")
    assert unknown.value.hint and "managed-identity" in unknown.value.hint


# -- tags within Azure ML's limits ------------------------------------------------------------


def test_tags_stay_within_azure_ml_limits_and_say_what_was_left_out(
    azureml_box: BoxWorkspaces, box_env: dict[str, str], ws_uri: str, source: Source,
    unique_model_name: str,
) -> None:
    run = copy(source, f"{TAGGED}/1", ws_uri, unique_model_name)

    assert run.code == 0, run.both
    (version,) = versions_in(azureml_box.workspace, unique_model_name)
    tags = dict(version.tags)
    limits = AZURE_ML_TAG_LIMITS
    assert limits.max_tags and limits.max_key and limits.max_value
    assert len(tags) <= limits.max_tags
    assert all(len(k) <= limits.max_key and len(v) <= limits.max_value for k, v in tags.items())
    # Provenance is complete; the chain kept its newest hops and says how many it left out.
    assert tags[lineage.SOURCE_NAME] == TAGGED
    chain = json.loads(tags[lineage.CHAIN])
    assert chain[-1]["uri"] == "https://previous.example.com"
    assert int(tags[lineage.CHAIN_DROPPED]) + len(chain) == 9
    # The source's own tags: as many as fit, in key order; the rest named.
    dropped = tags[lineage.TAGS_DROPPED]
    assert "long.value" in dropped and "k" * 100 in dropped
    assert tags["team.tag00"] == "value-0"
    assert len(tags) == limits.max_tags
    # Re-running is stable: same tags, same version.
    again = copy(source, f"{TAGGED}/1", ws_uri, unique_model_name)
    assert again.document["status"] == "unchanged"


def test_version_tags_are_deterministic_and_keep_provenance() -> None:
    limits = lineage.TagLimits(max_tags=5, max_key=10, max_value=20)
    provenance = {"amlpromote.a": "x" * 30, "amlpromote.b": "short"}
    source_tags = {"b": "2", "a": "1", "c": "3", "toolongkey!!": "v", "d": "y" * 21}

    first = lineage.version_tags(source_tags, provenance, limits)

    assert first == lineage.version_tags(dict(reversed(source_tags.items())), provenance, limits)
    assert first["amlpromote.a"] == "x" * 17 + "..."
    assert first["amlpromote.b"] == "short"
    assert first[lineage.TAGS_CUT] == "1: amlpromote.a"
    assert set(first) == {"amlpromote.a", "amlpromote.b", lineage.TAGS_CUT,
                          lineage.TAGS_DROPPED, "a"}
    assert first[lineage.TAGS_DROPPED].startswith("4: b, c, d, too")
    assert lineage.version_tags(source_tags, provenance) == {**source_tags, **provenance}


def _tagged_source(root: Path, name: str, tags: dict[str, str]) -> Source:
    uri = "sqlite:///" + str(root / "mlflow.db")
    with contextlib.chdir(root):
        register_raw_model(uri, name, {"MLmodel": b"flavors: {}\n", "x.txt": b"x"}, tags=tags)
    return Source(uri, root)


def test_source_tags_at_azure_ml_limits_are_carried_and_those_over_them_named(
    azureml_box: BoxWorkspaces, box_env: dict[str, str], ws_uri: str, unique_model_name: str,
    tmp_path: Path,
) -> None:
    # The box refuses what Azure ML's published limits refuse (tests/azureml_box/limits.py
    # RUN_TAG_LIMITS): a product limit set too high fails the write, one set too low drops a
    # tag that is exactly at a limit.
    key_at_limit, key_over = "k" * 100, "k" * 101
    tags = {key_at_limit: "key at the limit", key_over: "key over the limit",
            "a.value": "v" * 1000, "b.value": "w" * 1001,
            **{f"z.tag{i:02d}": str(i) for i in range(60)}}
    source = _tagged_source(tmp_path, "at-limits", tags)
    box = azureml_box.box

    run = copy(source, "at-limits/1", ws_uri, unique_model_name)

    assert run.code == 0, run.both
    assert [r for r in box.requests_for("mlflow") if r.status == 400] == []
    (version,) = versions_in(azureml_box.workspace, unique_model_name)
    written = dict(version.tags)
    assert written[key_at_limit] == "key at the limit"
    assert written["a.value"] == "v" * 1000
    assert len(written) == 50  # the published number of tags, no fewer
    dropped = written[lineage.TAGS_DROPPED]
    assert key_over in dropped and "b.value" in dropped
    assert "z.tag00" in written and "z.tag59" in dropped


def test_a_provenance_value_over_the_limit_is_shortened_and_named(
    azureml_box: BoxWorkspaces, box_env: dict[str, str], ws_uri: str, unique_model_name: str,
    tmp_path: Path,
) -> None:
    # A source model's name is a provenance value; Azure ML takes tag values of up to 1,000
    # characters, and provenance always stays (README "Azure ML workspace targets").
    long_name = "m" * 1200
    source = _tagged_source(tmp_path, long_name, {"team": "ml"})
    box = azureml_box.box

    run = copy(source, f"{long_name}/1", ws_uri, unique_model_name)

    assert run.code == 0, run.both
    assert [r for r in box.requests_for("mlflow") if r.status == 400] == []
    (version,) = versions_in(azureml_box.workspace, unique_model_name)
    written = dict(version.tags)
    assert written[lineage.SOURCE_NAME] == "m" * 997 + "..."
    assert written[lineage.TAGS_CUT] == f"1: {lineage.SOURCE_NAME}"
    assert written["team"] == "ml"
    assert run.document["source"]["name"] == long_name
    # The shortened value does not get in the way of recognising the promotion.
    again = copy(source, f"{long_name}/1", ws_uri, unique_model_name)
    assert again.code == 0, again.both
    assert again.document["status"] == "unchanged"
    assert len(versions_in(azureml_box.workspace, unique_model_name)) == 1
