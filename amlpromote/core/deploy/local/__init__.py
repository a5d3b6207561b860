"""Local online endpoints: one loopback server process per endpoint with the contract of an
Azure ML managed online endpoint serving MLflow models (server.py), its state in the user data
folder (state.py), and the `EndpointPlatform` that starts, drives and stops it (platform.py).

server.py runs as its own process and imports nothing of amlpromote but this package and
core/deploy/scoring.py, so it starts fast and cannot reach the registries.
"""
