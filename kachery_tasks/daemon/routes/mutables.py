"""Mutables: node-local JSON values under string keys."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Path, Query, Request

from ..statuses import NotFound
from . import node_of

router = APIRouter(tags=["mutables"])

KEY = Annotated[str, Path(description="the mutable's key (may contain '/')")]
_UNSET = object()


@router.get("/mutables", summary="Every mutable whose key starts with a prefix")
def list_mutables(request: Request,
                  prefix: Annotated[str, Query(max_length=1000)] = "") -> dict:
    return {"mutables": node_of(request).list_mutables(prefix)}


@router.get("/mutables/{key:path}", summary="One mutable's value")
def get_mutable(request: Request, key: KEY) -> dict:
    value = node_of(request).get_mutable(key, _UNSET)
    if value is _UNSET:
        raise NotFound(f"no mutable {key!r} is set on this node")
    return {"key": key, "value": value}


@router.put("/mutables/{key:path}", summary="Set a mutable to the JSON value in the body")
def set_mutable(request: Request, key: KEY, value: Annotated[Any, Body()]) -> dict:
    node_of(request).set_mutable(key, value)
    return {"key": key, "value": value}


@router.delete("/mutables/{key:path}", summary="Remove a mutable")
def delete_mutable(request: Request, key: KEY) -> dict:
    return {"key": key, "deleted": node_of(request).delete_mutable(key)}
