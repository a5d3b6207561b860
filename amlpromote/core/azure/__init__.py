"""Azure: what every Azure feature shares.

- `credentials.py`: the `--credential` kinds and the azure-identity credential for each;
- `arm.py`: Azure Resource Manager failures as our errors, azureml-mlflow's cache put back;
- `discovery.py`: a workspace's or registry's coordinates -> its MLflow URI;
- `connection.py`: one workspace or registry (`AzureMlScope`) and its signed-in connection.

Never imports registries/, storage/, promote/ or deploy/: the MLflow client on a workspace is
built in registries/azureml_workspace.py, the artifact service in storage/azure_blob.py and the
online endpoints in deploy/azureml_online.py, all on top of this. azure-ai-ml and
azure-identity are imported inside the functions that need them.
"""
