"""The authorization tests' shared world (two users with data, a third without, an admin)."""

from tests.wiring.test_authorization import world  # noqa: F401 - a fixture for this folder
