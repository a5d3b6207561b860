"""The domain layer: plain functions and dataclasses, usable as a library.

Nothing here imports typer or rich; heavy libraries (mlflow, azure) are imported inside the
functions that need them so that the CLI starts fast.
"""
