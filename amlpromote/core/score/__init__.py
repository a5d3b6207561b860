"""Score: data in, predictions out, from a few rows to a folder of files.

- `tables.py`: inputs read as a stream of record batches (CSV, parquet, JSON lines, a folder of
  them, CSV on stdin) and outputs written to a temporary name and renamed at the end;
- `signature.py`: the model's signature, the check of an input's columns against it before
  anything is scored, and the casts that make a batch what the signature asks for;
- `predictions.py`: a model's or an endpoint's answer for a batch turned into named columns;
- `local_engine.py`: mlflow.pyfunc over the batches, in worker processes that each load the
  model once;
- `spark_engine.py`: mlflow.pyfunc.spark_udf over a Spark DataFrame that Spark reads and writes;
- `online.py`: the client that sends batches to an online endpoint, concurrently, with retries.

May import deploy's read side: `deploy.fetch` (find and cache a version), `deploy.where` and
`deploy.platform` (reach an endpoint), `deploy.scoring` (the scoring contract's limits) and
`deploy.local.server`'s load-failure explanation. Never imports `deploy.rollout`, promote/
beyond `promote.inventory`, typer, rich or amlpromote.cli. pyarrow, pandas, mlflow and pyspark
are imported inside the functions that need them.
"""
