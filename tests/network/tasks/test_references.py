"""Arguments that travel by reference across a channel: a File (also deep inside a dataclass)
and a lazy zarr array held only by the requester reach the real provider through the
channel's bucket (real broker and SDK)."""

from __future__ import annotations

import os

import numpy as np

import kachery_tasks as kachery
from kachery_tasks.network.tasks import Provided, protocol
from kachery_tasks.network.tasks.provider import TaskProvider
from kachery_tasks.runtime import cache

from ..channels.conftest import admitting_broker, lab  # noqa: F401 - fixtures
from . import reference_tasks as ref


def test_a_file_and_a_zarr_array_reach_the_provider(lab, tmp_path):  # noqa: F811
    """Both are held only by the requester, and the provider computes with them."""
    for name in ("prov", "alice"):
        lab.add(name)
    provided = Provided.from_modules([ref.__name__])
    session = lab.session("prov", start=False)
    session.present(daemon=True, **{protocol.PRESENCE_KEY: provided.describe()})
    provider = TaskProvider(session.start(), lab.nodes["prov"], provided)
    data = tmp_path / "data.bin"
    data.write_bytes(os.urandom(100_000))
    other = tmp_path / "other.bin"
    other.write_bytes(os.urandom(5_000))
    values = np.arange(20_000, dtype=np.float64).reshape(20, 1000)
    try:
        alice = lab.nodes["alice"]
        with alice:
            array = kachery.load_zarr(kachery.store_zarr(values, chunks=(5, 1000)))
            with kachery.channel("lab", timeout=30):
                assert ref.size_of(kachery.File(data)) == 100_000
                assert ref.total(array) == float(values.sum())
                deep = ref.Bundle([((([kachery.File(other)],),),)])  # 6 levels, in a dataclass
                assert ref.nested_size(deep) == 5_000
            records = cache.current().records
            computed_by = {records.result(ref.size_of.task_id(kachery.File(data))).node,
                           records.result(ref.total.task_id(array)).node}
        assert computed_by == {lab.nodes["prov"].id}  # computed there, not here
    finally:
        provider.close()
