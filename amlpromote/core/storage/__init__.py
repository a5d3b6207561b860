"""Bytes: listing a version's files, HTTP sessions, streamed copies with digests, and Azure
blob uploads through Azure ML's artifact service.

Owns: artifacts.py (sources and sinks, listing, HTTP sessions), transfer.py (parallel streamed
copies, digests, progress), azure_blob.py (blob uploads and the Azure ML artifact service).

Never imports registries/ or promote/: a storage module moves bytes between locations it is
given and knows nothing of model versions. It may use azure/ (the connection's token) and the
shared ground (errors, retry, uris).
"""
