"""The API's routes, one module per part of the node (each defines ``router``)."""

from __future__ import annotations

from typing import Any

from fastapi import Request

from ...nodes import Node


def node_of(request: Request) -> Node:
    """The node this API serves."""
    return request.app.state.node


def daemon_of(request: Request) -> Any | None:
    """The node's channel services (NodeDaemon), or None when they are not running."""
    return request.app.state.daemon
