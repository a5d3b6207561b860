"""The domain layer: plain functions and dataclasses, usable as a library.

Shared ground lives here at the top: errors, config (the config file), settings (what a command
resolves from flags, environment and config), refs and uris (parsing what the user names),
names (target model names), retry. The features sit in packages over it:

- `registries/`: one module per registry kind, behind the source and target interfaces;
- `storage/`: bytes — listing, streamed copies, digests, blob uploads;
- `azure/`: credentials, Resource Manager calls, discovery, shared by every Azure feature;
- `promote/`: copy-model, and the read-only commands over what it wrote (models, --check);
- `deploy/`: online endpoints (Azure ML managed, local): preflight, rollout, smoke test.

Nothing in core/ imports typer, rich or amlpromote.cli. The shared-ground modules never import
registries/, storage/, promote/ or deploy/ (settings reaches azure/ for discovery only). Heavy
libraries (mlflow, azure) are imported inside the functions that need them so that the CLI
starts fast.
tests/test_layout.py checks these rules.
"""
