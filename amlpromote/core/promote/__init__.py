"""copy-model, and the read-only views over what it writes.

- promote.py: plan, transfer, register, verify (`promote_version`);
- inventory.py: `models list` / `models show`, which read the lineage that promote.py writes and
  judge a version's loadability with promote.py's rules;
- check.py: `configure --check`, which exercises exactly what copy-model needs of a source (read)
  and a target (write).

Never imports cli/, typer or rich (it returns results; cli/ renders them), and never
imports deploy/. May import
registries/, storage/, azure/ and the shared ground; nothing else in core/ imports promote/
(only the command modules in cli/ do).
"""
