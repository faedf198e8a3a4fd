"""Tasks taking arguments that travel by reference (a File, a stored zarr array), served by
the provider in tests/network/tasks/test_references.py."""

import dataclasses

import kachery_tasks as kachery


@kachery.pure
def size_of(f):
    with open(f.path, "rb") as fh:
        return len(fh.read())


@kachery.pure
def total(array):
    return float(array[:].sum())


@dataclasses.dataclass(frozen=True)
class Bundle:
    """Files deep inside a dataclass: the wire reaches them wherever they are."""

    nested: list


@kachery.pure
def nested_size(bundle):
    (((([f],),),),) = bundle.nested
    with open(f.path, "rb") as fh:
        return len(fh.read())
