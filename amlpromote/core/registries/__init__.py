"""Model registries, one module per kind, behind the source and target interfaces.

- registry.py: `MlflowRegistry`, the source interface (and the MLflow side of a target) for every
  URI; plain MLflow servers over REST (mlflow_rest.py), local MLflow stores (stores.py inspects
  them before MLflow opens them), Databricks (databricks.py), Azure ML workspaces
  (azureml_workspace.py);
- target.py: the target interface (`PromotionTarget`) and its data types (`StagedUpload`,
  `AZURE_ML_MAX_FILES`); mlflow_target.py writes through MLflow (`make_target` picks a target),
  azureml_registry.py writes an Azure ML registry;
- mlflow_env.py: MLflow's process-wide settings and error translation, shared by registry.py and
  databricks.py so neither imports the other for them;
- lineage.py, staging.py: the tags a target writes (provenance; staging ownership) and reads back.

Never imports promote/: promote/ drives these interfaces, not the other way round. May use
storage/, azure/ and the shared ground.
"""
