"""Where a node lives: the node directory and its ``config.toml``.

The node directory is ``$KACHERY_TASKS_DIR``, or ``~/.kachery-tasks`` when that
is unset. It is created with a commented ``config.toml`` on first use. Every
part of the node keeps its state below it (``store/``, ``mutables.db``, ...),
so pointing ``KACHERY_TASKS_DIR`` elsewhere gives a completely separate node.

A directory with the setgid bit is treated as shared by a lab group: whatever
is created inside is made group-writable (see :mod:`kachery_tasks.fsutil`).
"""

from __future__ import annotations

import os
import threading
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError, KacheryError
from .fsutil import ensure_dir, is_group_shared, write_atomic
from .sizes import parse_size

ENV_DIR = "KACHERY_TASKS_DIR"

DEFAULT_CONFIG_TOML = """\
# kachery-tasks node configuration. Sizes accept units: 4096, 20MiB, 1.5GB.

[store]
# Files larger than this travel between nodes as verified chunks listed in a manifest.
chunk_size = "20MiB"

[ui]
# Operations on files at least this large show a progress bar on a terminal.
progress_threshold = "100MB"

[bucket]
# The bucket shared with collaborators (KACHERY_TASKS_BUCKET overrides it), e.g.
# url = "gs://lab-share/kachery"  or  url = "file:///mnt/lab-share/kachery"
# Chunks transferred at once.
transfer_threads = 8
# A request that gets no answer (or no byte) for this many seconds is retried.
# request_timeout = 30
# One object's transfer, retries included, is given up after this many seconds,
# plus one second for every min_rate bytes of the object.
# deadline = 120
# min_rate = "100kB"
"""


@dataclass(frozen=True)
class Config:
    """The settings of one node, read from its ``config.toml``."""

    chunk_size: int = 20 * 2**20
    progress_threshold: int = 100 * 10**6
    bucket_url: str | None = None
    transfer_threads: int = 8
    raw: dict[str, Any] = field(default_factory=dict)
    transfer_limits: TransferLimits = field(default_factory=lambda: TransferLimits())

    @classmethod
    def from_toml(cls, text: str, source: str = "config.toml") -> Config:
        """Parse and validate a config document.

        Each known section must be a table and each known setting of the right
        type and range; anything wrong is a ConfigError naming the file and the
        setting. Unknown sections and settings are left alone.
        """
        try:
            raw = tomllib.loads(text)
        except ValueError as e:  # TOMLDecodeError, or an integer of over 4300 digits
            raise ConfigError(f"{source} is not valid TOML: {e}") from e
        store, ui, bucket = (_section(raw, name, source) for name in ("store", "ui", "bucket"))
        threads = bucket.get("transfer_threads", cls.transfer_threads)
        if not isinstance(threads, int) or isinstance(threads, bool) or not 1 <= threads <= 256:
            raise ConfigError(f"{source}: bucket.transfer_threads must be a whole number 1..256")
        url = bucket.get("url")
        if url is not None and not isinstance(url, str):
            raise ConfigError(f"{source}: bucket.url must be a string like gs://lab/kachery")
        chunk_size = _size(store, "chunk_size", cls.chunk_size, f"{source}: store.chunk_size")
        threshold = _size(
            ui, "progress_threshold", cls.progress_threshold, f"{source}: ui.progress_threshold"
        )
        if chunk_size < 1024:
            raise ConfigError(f"{source}: store.chunk_size must be at least 1 KiB")
        return cls(
            chunk_size=chunk_size,
            progress_threshold=threshold,
            bucket_url=url or None,
            transfer_threads=threads,
            raw=raw,
            transfer_limits=TransferLimits.from_section(bucket, source),
        )


def _section(raw: dict[str, Any], name: str, source: str) -> dict[str, Any]:
    """The table ``[name]`` of a parsed config (empty when absent)."""
    section = raw.get(name, {})
    if not isinstance(section, dict):
        raise ConfigError(
            f"{source}: {name} must be a table (a [{name}] section), not {type(section).__name__}"
        )
    return section


def _size(section: dict[str, Any], key: str, default: int, where: str) -> int:
    """The size setting ``key`` of ``section``, validated by parse_size."""
    try:
        return parse_size(section.get(key, default))
    except KacheryError as e:
        raise ConfigError(f"{where}: {e}") from e


class NodeDir:
    """One node's directory: paths of its parts and its configuration."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.shared = is_group_shared(path)
        self.config_path = path / "config.toml"
        self.config = self._load_config()

    def _load_config(self) -> Config:
        try:
            data = self.config_path.read_bytes()
        except FileNotFoundError:
            return Config()
        except OSError as e:
            raise ConfigError(f"cannot read {self.config_path}: {e.strerror}") from e
        try:
            text = data.decode("utf-8")  # TOML is UTF-8, whatever the locale
        except UnicodeDecodeError as e:
            raise ConfigError(
                f"{self.config_path} is not UTF-8 text (byte {e.start}); "
                "save it as UTF-8 or delete it to get the default"
            ) from e
        return Config.from_toml(text, str(self.config_path))

    def sub(self, *parts: str) -> Path:
        """A path inside the node directory (not created)."""
        return self.path.joinpath(*parts)

    def ensure(self, *parts: str) -> Path:
        """A directory inside the node directory, created (shared-aware) if absent."""
        return ensure_dir(self.sub(*parts), self.shared)

    def __repr__(self) -> str:
        return f"NodeDir({str(self.path)!r})"


_lock = threading.Lock()
_nodes: dict[Path, NodeDir] = {}


def default_path() -> Path:
    """The node directory this process uses: ``$KACHERY_TASKS_DIR`` or ``~/.kachery-tasks``."""
    env = os.environ.get(ENV_DIR)
    if env:
        return Path(env).expanduser().absolute()
    return Path.home() / ".kachery-tasks"


def init_node_dir(path: Path | None = None, shared: bool = False) -> NodeDir:
    """Create the node directory (and ``config.toml``) if needed and return it.

    With ``shared=True`` the directory is made setgid and group-writable so every
    member of its group can use it.
    """
    path = (path or default_path()).absolute()
    try:
        is_file = path.exists() and not path.is_dir()
    except OSError as e:  # a name too long, a loop of symlinks, ...
        raise ConfigError(f"cannot use {path} as a node directory: {e.strerror}") from e
    if is_file:
        raise ConfigError(f"{path} exists and is not a directory; set {ENV_DIR} elsewhere")
    ensure_dir(path, shared=shared or is_group_shared(path.parent))
    if shared:
        os.chmod(path, 0o2775)
    config_path = path / "config.toml"
    if not config_path.exists():
        write_atomic(config_path, DEFAULT_CONFIG_TOML.encode(), shared=is_group_shared(path))
    with _lock:
        node = NodeDir(path)
        _nodes[path] = node
    return node


def node_dir(path: Path | None = None) -> NodeDir:
    """The node directory at ``path`` (default: :func:`default_path`), created on first use."""
    path = (path or default_path()).absolute()
    node = _nodes.get(path)
    if node is not None and node.config_path.exists():
        return node
    return init_node_dir(path)


@dataclass(frozen=True)
class TransferLimits:
    """How long a bucket transfer may take before it is given up (``[bucket]`` settings).

    A server that stops answering costs at most ``request_timeout`` per
    attempt, and one object's transfer, retries included, at most
    :meth:`deadline_for` its size.
    """

    request_timeout: float = 30.0  # seconds without an answer or a byte
    deadline: float = 120.0  # seconds for any one object, retries included...
    min_rate: int = 100_000  # ...plus a second per this many bytes of it

    def deadline_for(self, size: int) -> float:
        """Seconds an object of ``size`` bytes may take, retries included."""
        return self.deadline + size / self.min_rate

    @classmethod
    def from_section(cls, bucket: dict[str, Any], source: str) -> TransferLimits:
        """The limits set in a config's ``[bucket]`` table (defaults for what is not set)."""
        seconds = {}
        for key in ("request_timeout", "deadline"):
            value = bucket.get(key, getattr(cls, key))
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ConfigError(f"{source}: bucket.{key} must be a number of seconds above 0")
            seconds[key] = float(value)
        try:
            rate = parse_size(bucket.get("min_rate", cls.min_rate))
        except KacheryError as e:
            raise ConfigError(f"{source}: bucket.min_rate: {e}") from e
        if rate < 1:
            raise ConfigError(f"{source}: bucket.min_rate must be at least 1 byte (per second)")
        return cls(seconds["request_timeout"], seconds["deadline"], rate)
