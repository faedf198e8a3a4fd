"""Where content lives in a bucket (see docs/buckets.md, Layout)::

    blobs/sha256/<hex>              content no larger than the chunk size
    chunks/sha256/<chunk hex>       one chunk of larger content
    manifests/sha256/<hex>.json     its manifest (see docs/storage.md)
    results/<task id hex>.json      a signed pure-result record (see docs/tasks.md)
    feeds/<feed id>/<subfeed>/...   feed segments (see kachery_tasks.feeds.bucket)
"""

from __future__ import annotations


def blob_key(sha256: str) -> str:
    return f"blobs/sha256/{sha256}"


def chunk_key(sha256: str) -> str:
    return f"chunks/sha256/{sha256}"


def manifest_key(sha256: str) -> str:
    return f"manifests/sha256/{sha256}.json"


def result_key(task_id: str) -> str:
    return f"results/{task_id.split(':', 1)[-1]}.json"
