"""Files: store by upload, load (with HTTP Range), info, list and search by label."""

from __future__ import annotations

import os
from typing import Annotated

from fastapi import APIRouter, Header, Path, Query, Request
from starlette.concurrency import run_in_threadpool

from ...canonical import check_text
from ...errors import ContentNotFoundError
from ..blobs import BlobResponse, content_headers, receive_upload
from ..ranges import parse_range
from ..statuses import UnsupportedMediaType
from . import node_of

router = APIRouter(tags=["files"])

SHA256 = Annotated[str, Path(pattern="^[0-9a-f]{64}$", description="the content's SHA-256 (hex)")]


def _row_dict(row) -> dict:
    return {"uri": f"sha256://{row.sha256}", "sha256": row.sha256, "size": row.size,
            "label": row.label, "stored": row.stored, "pinned": bool(row.pinned),
            "linked": row.link_path is not None}


@router.get("/files", summary="Content in this node's store, newest first; search by label")
def list_files(request: Request,
               label: Annotated[str | None, Query(max_length=1000, description=(
                   "only content whose label contains this (ignoring case)"))] = None,
               limit: Annotated[int, Query(ge=1, le=10_000)] = 200) -> dict:
    rows = list(node_of(request).store.list())
    if label:
        needle = label.lower()
        rows = [r for r in rows if r.label and needle in r.label.lower()]
    rows.sort(key=lambda r: r.stored, reverse=True)
    return {"files": [_row_dict(r) for r in rows[:limit]], "total": len(rows)}


@router.post("/files", summary="Store the request body as content; its URI",
             openapi_extra={"requestBody": {"required": True, "content": {
                 "application/octet-stream": {"schema": {"type": "string",
                                                         "format": "binary"}}}}})
async def upload(request: Request,
                 label: Annotated[str | None, Query(max_length=1000)] = None) -> dict:
    if label is not None:
        check_text(label, "a label")
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/octet-stream":
        raise UnsupportedMediaType(
            f"send the file's bytes as the body with 'Content-Type: application/octet-stream', "
            f"not {kind or 'no content type'}")
    store = node_of(request).store
    uri = await receive_upload(store, request.stream(), label or None)
    request.app.state.events.publish({"type": "file", "uri": uri})
    return {"uri": uri}


@router.get("/files/{sha256}", summary="The content's bytes; one HTTP Range at a time",
            response_class=BlobResponse, response_model=None, status_code=200,
            responses={200: {"content": {"application/octet-stream": {}}},
                       206: {"description": "the requested range",
                             "content": {"application/octet-stream": {}}}})
async def download(request: Request, sha256: SHA256,
                   range: Annotated[str | None, Header()] = None) -> BlobResponse:
    node = node_of(request)
    uri = f"sha256://{sha256}"
    try:  # here: a stat, done at once; else fetched through the remotes, on a thread
        path = node.store.load_file(uri)
    except ContentNotFoundError:
        path = await run_in_threadpool(node.local_path, uri)
    size = os.path.getsize(path)
    span = parse_range(range, size)
    row = node.store.index.get(sha256)
    headers = content_headers(sha256, size, span, row.label if row else None)
    start, end = span if span is not None else (0, size)
    return BlobResponse(path, start, end, 206 if span is not None else 200, headers)


@router.get("/files/{sha256}/info", summary="Size, label, chunks and more of stored content")
def file_info(request: Request, sha256: SHA256) -> dict:
    info = node_of(request).load_file_info(f"sha256://{sha256}")
    return {"uri": info.uri, "sha256": info.sha256, "size": info.size, "label": info.label,
            "path": info.path, "linked_path": info.linked_path, "sha1": info.sha1,
            "manifest_uri": info.manifest_uri, "chunks": info.chunks, "pinned": info.pinned,
            "last_access": info.last_access}
