"""What the pages say about an error: the service's sentence states the fact; the page
adds where, in this app, to go about it."""

from __future__ import annotations

from parley.core.errors import GrantRequired, HistoryTooLong, ParleyError


def say(exc: ParleyError) -> str:
    """The sentence a page shows for `exc`."""
    if isinstance(exc, GrantRequired):
        return f"{exc.user_message} Open it from the admin console's conversations, with a reason."
    if isinstance(exc, HistoryTooLong):
        return (
            f"{exc.user_message} An administrator can switch this conversation to another "
            "memory strategy (for example `hybrid`) in the strategy lab."
        )
    return exc.user_message


__all__ = ["say"]
