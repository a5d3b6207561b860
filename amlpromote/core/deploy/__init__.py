"""Deploy: put a registered model version into service behind an online endpoint.

- `platform.py`: the small platform-neutral contract (endpoint, deployment, invocation) that
  every endpoint platform implements, and the errors a rollout reports;
- `preflight.py`: checks on the model's own files before anything is created;
- `smoke.py`: the smoke-test request built from the model's input example or a user file, and
  the check of the answer;
- `rollout.py`: the safe rollout on any platform: plan, create, smoke test, traffic, rollback;
- `fetch.py`: a version's files into a local cache keyed by digest (for local endpoints);
- `azureml_online.py`: Azure ML managed online endpoints through azure-ai-ml;
- `local/`: local online endpoints: the loopback server (`server.py`, run as its own process),
  its on-disk state (`state.py`) and the platform that drives it (`platform.py`).

Never imports promote/ but its read side (`promote.inventory`: `deploy --promote` runs the
copy-model step from the CLI first), never
imports typer, rich or amlpromote.cli. Heavy libraries (mlflow, pandas, azure.ai.ml) are
imported inside the functions that need them.
"""
