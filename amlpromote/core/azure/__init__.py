"""Azure: what every Azure feature shares — credentials, Resource Manager calls, workspace and
registry discovery, and the signed-in connection (connection.py).

Never imports registries/, storage/ or promote/: the MLflow client on a workspace is built in
registries/azureml_workspace.py and the artifact service in storage/azure_blob.py, both on top of
this. azure-ai-ml and azure-identity are imported inside the functions that need them.
"""
