"""The channel fixtures (a broker with channel admission, a lab of member nodes)."""

from tests.network.channels.conftest import admitting_broker, lab  # noqa: F401
