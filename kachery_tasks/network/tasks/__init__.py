"""Tasks between nodes of a channel: claims and the provider registry.

* :mod:`.claims` — :class:`Claims`: a signed claim object per task id in the
  channel's bucket, so that each call of a pure task or an action runs once
  in the whole channel (renewed while it runs, taken over when its holder
  dies, ignored when not signed by a member allowed to process tasks).
* :mod:`.swap` — compare-and-swap on one bucket object that holds on every
  backend (``file://`` too), which claims are written with.
* :mod:`.registry` — :class:`Provided`: the tasks a provider runs for others,
  imported from named modules and looked up by name; nothing else runs.

The format and the rules are in ``docs/remote-tasks.md``.
"""

from .claims import DEFAULT_TTL, KIND, Claim, Claims, Holder, parse_claim, runs_once
from .registry import Provided

__all__ = ["DEFAULT_TTL", "KIND", "Claim", "Claims", "Holder", "Provided", "parse_claim",
           "runs_once"]
