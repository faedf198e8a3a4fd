"""Tasks between nodes of a channel.

* :mod:`.swap` — compare-and-swap on one bucket object that holds on every
  backend (``file://`` too).
* :mod:`.registry` — :class:`Provided`: the tasks a provider runs for others,
  imported from named modules and looked up by name; nothing else runs.
"""

from .registry import Provided

__all__ = ["Provided"]
