"""The rollout's plan: which deployment name, what traffic after, and when a deploy is a no-op.

Pure decisions, checked on their own; the end-to-end deploy tests (test_deploy_local.py,
test_deploy_azureml.py) drive the same code through the CLI against real servers.
"""

from __future__ import annotations

import pytest

from amlpromote.core.deploy.platform import DeploymentInfo, EndpointInfo, ModelVersion
from amlpromote.core.deploy.rollout import (
    DeployRequest,
    _choose_name,
    _split_after,
    _unchanged,
    check_request,
)
from amlpromote.core.errors import BadInput

MODEL = ModelVersion("heart", "2", "/subscriptions/s/resourceGroups/rg/providers/"
                     "Microsoft.MachineLearningServices/workspaces/ws/models/heart/versions/2")


def endpoint(traffic: dict[str, int], models: dict[str, str] | None = None,
             mirror: dict[str, int] | None = None) -> EndpointInfo:
    models = models or {}
    return EndpointInfo("heart", "azureml", "https://heart/score", "key", "Succeeded",
                        traffic=traffic, mirror=mirror or {},
                        deployments=[DeploymentInfo(name, models.get(name, "other"),
                                                    "Succeeded") for name in
                                     sorted(set(traffic) | set(models))])


def request(**kw: object) -> DeployRequest:
    return DeployRequest(endpoint="heart", model=MODEL, smoke=None, **kw)  # type: ignore[arg-type]


def test_the_new_deployment_is_whichever_of_blue_and_green_takes_no_traffic() -> None:
    assert _choose_name(request(), None) == "blue"
    assert _choose_name(request(), endpoint({"blue": 100})) == "green"
    assert _choose_name(request(), endpoint({"green": 100, "blue": 0})) == "blue"
    with pytest.raises(BadInput, match="both blue and green") as caught:
        _choose_name(request(), endpoint({"blue": 50, "green": 50}),
                     "amlpromote endpoints traffic e blue=100 green=0 --local")
    # The rollout passes the command as the platform names it (endpoints_command).
    assert "(e.g. amlpromote endpoints traffic e blue=100 green=0 --local)" in str(
        caught.value.hint)


def test_a_named_deployment_that_takes_traffic_is_never_replaced_in_place() -> None:
    with pytest.raises(BadInput, match="takes 100% of the traffic"):
        _choose_name(request(deployment="blue"), endpoint({"blue": 100}))
    assert _choose_name(request(deployment="canary"), endpoint({"blue": 100})) == "canary"


def test_the_rest_of_the_traffic_stays_on_what_was_live_in_its_proportions() -> None:
    assert _split_after({}, "blue", 100) == {"blue": 100}
    assert _split_after({"blue": 100}, "green", 100) == {"green": 100}
    assert _split_after({"blue": 100}, "green", 10) == {"blue": 90, "green": 10}
    after = _split_after({"a": 50, "b": 50}, "c", 33)
    assert after["c"] == 33 and sum(after.values()) == 100 and abs(after["a"] - after["b"]) <= 1
    with pytest.raises(BadInput, match="no other live deployment"):
        _split_after({}, "blue", 10)


def test_the_version_already_live_with_the_asked_traffic_is_unchanged() -> None:
    live = endpoint({"blue": 100}, {"blue": MODEL.asset_id})
    assert _unchanged(request(), live) == "blue"
    # ARM ids compare without case.
    upper = endpoint({"blue": 100}, {"blue": MODEL.asset_id.upper()})
    assert _unchanged(request(), upper) == "blue"
    assert _unchanged(request(traffic=10), live) is None
    assert _unchanged(request(), endpoint({"blue": 100})) is None
    mirrored = endpoint({"blue": 100, "green": 0}, {"green": MODEL.asset_id}, {"green": 20})
    assert _unchanged(request(mirror=20), mirrored) == "green"
    assert _unchanged(request(mirror=10), mirrored) is None


def test_shares_out_of_range_are_refused_before_anything_is_read() -> None:
    with pytest.raises(BadInput, match="0 to 100"):
        check_request(request(traffic=120))
    with pytest.raises(BadInput, match="1 to 50"):
        check_request(request(mirror=60))
