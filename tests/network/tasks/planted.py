"""A result record planted in a channel's bucket by a non-member (a key not in its config).

The record is well formed and validly signed, and its result (a wrong value) is
uploaded too: only the channel's rule that results come from members allowed
to process tasks can tell it apart from a member's.
"""

from __future__ import annotations

import hashlib
import time

from kachery_tasks.envelopes import seal
from kachery_tasks.keys import KeyPair
from kachery_tasks.runtime import results, shared
from kachery_tasks.storage.buckets import Bucket
from kachery_tasks.storage.layout import blob_key, result_key


def plant_record(bucket: Bucket, task_id: str, function: str, value: object,
                 key: KeyPair | None = None) -> KeyPair:
    """Write a signed record claiming ``value`` is the result of ``task_id``; the key used."""
    key = key or KeyPair.generate()
    codec, data = results.encode(value)
    data = bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    bucket.put(blob_key(sha), data)
    body = {"task_id": task_id, "kind": "pure", "function": function,
            "result_uri": f"sha256://{sha}", "codec": codec.name, "node": key.public_hex,
            "finished": time.time()}
    assert bucket.put(result_key(task_id), seal(shared.KIND, body, key).to_bytes())
    return key
