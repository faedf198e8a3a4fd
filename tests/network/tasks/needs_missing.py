"""A task module that imports a package this environment lacks."""

import kachery_tasks_no_such_dependency  # noqa: F401
