"""Tasks taking arguments that travel by reference (a File, a stored zarr array), served by
the provider in tests/network/tasks/test_references.py."""

import kachery_tasks as kachery


@kachery.pure
def size_of(f):
    with open(f.path, "rb") as fh:
        return len(fh.read())


@kachery.pure
def total(array):
    return float(array[:].sum())
