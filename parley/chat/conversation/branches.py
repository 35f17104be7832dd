"""A conversation's messages as a tree, and the branch it shows.

Each message names the one it follows (`Message.parent_id`). Sending follows the branch
shown; editing a question adds a sibling of that question (it follows what the old one
followed) and regenerating an answer adds a sibling of that answer, so nothing is ever
rewritten: a stored message's text never changes (`history.HistoryCache` relies on it).
The conversation keeps the newest message of the branch it shows (`active_leaf_id`);
the branch is the path from the first message down to it. A parent is always older
than its children (a lower id), so a path's ids rise, and a summary folded on one path
holds only that path's turns (`parley.memory.summaries`).

Answers a retry replaced (`superseded`) stay in the tree for the record, but are never
shown, never counted as siblings and never a leaf.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Row, select
from sqlalchemy.orm import Session

from parley.core.domain import MessageRole, MessageStatus
from parley.core.errors import InvalidInput
from parley.store.models import Conversation, Message


@dataclass(frozen=True, slots=True)
class Node:
    id: int
    parent_id: int | None
    role: MessageRole
    status: MessageStatus


@dataclass(frozen=True, slots=True)
class Branching:
    """Where a shown message stands among its siblings: `position` of `count` (1-based),
    and the ids of the siblings before and after it (None at either end)."""

    position: int
    count: int
    previous: int | None
    next: int | None


class Tree:
    """The messages of one conversation, by id; built from `load_tree`'s rows."""

    def __init__(self, nodes: Iterable[Node]) -> None:
        self.nodes = {n.id: n for n in nodes}
        self._children: dict[int | None, list[int]] = {}
        for node in sorted(self.nodes.values(), key=lambda n: n.id):
            older = node.parent_id is None or node.parent_id < node.id  # else: ignored
            if node.status is not MessageStatus.SUPERSEDED and older:
                self._children.setdefault(node.parent_id, []).append(node.id)

    def shown(self, node_id: int | None) -> bool:
        node = self.nodes.get(node_id) if node_id is not None else None
        return node is not None and node.status is not MessageStatus.SUPERSEDED

    def leaf(self, active: int | None) -> int | None:
        """The branch's newest message: `active` while it is shown, else the newest message."""
        if self.shown(active):
            return active
        return self.newest_under(None)

    def path(self, leaf: int | None) -> list[int]:
        """The ids from the first message down to `leaf`, oldest first."""
        ids: list[int] = []
        node = self.nodes.get(leaf) if leaf is not None else None
        while node is not None:
            ids.append(node.id)
            parent = node.parent_id
            # A parent is older: a row that says otherwise ends the walk (no loop).
            node = self.nodes.get(parent) if parent is not None and parent < node.id else None
        ids.reverse()
        return ids

    def newest_under(self, node_id: int | None) -> int | None:
        """The newest shown message at or below `node_id` (None: the whole conversation).

        The newest is always a leaf of the tree (its children would be newer still), so
        stepping to a sibling opens the branch last written under it."""
        best = node_id if self.shown(node_id) else None
        stack = list(self._children.get(node_id, ()))
        while stack:
            current = stack.pop()
            best = current if best is None or current > best else best
            stack.extend(self._children.get(current, ()))
        return best

    def branching(self, node_id: int) -> Branching:
        node = self.nodes[node_id]
        siblings = self._children.get(node.parent_id, [node_id])
        index = siblings.index(node_id) if node_id in siblings else 0
        return Branching(
            position=index + 1,
            count=len(siblings),
            previous=siblings[index - 1] if index > 0 else None,
            next=siblings[index + 1] if index + 1 < len(siblings) else None,
        )


def load_tree(session: Session, conversation_id: int) -> Tree:
    rows = session.execute(
        select(Message.id, Message.parent_id, Message.role, Message.status).where(
            Message.conversation_id == conversation_id
        )
    )
    return Tree(Node(r.id, r.parent_id, r.role, r.status) for r in rows)


def path_rows(session: Session, leaf_id: int, *, above: int = 0) -> list[Row[Any]]:
    """The messages on the path down to `leaf_id` with an id over `above`, oldest first,
    as plain columns: one recursive query that walks up from the leaf by primary key and
    stops at the first message at or below `above` (so a path already read is not read
    again). The first row's `parent_id` is where the walk joined what is known."""
    up = (
        select(Message.id, Message.parent_id)
        .where(Message.id == leaf_id, Message.id > above)
        .cte("up", recursive=True)
    )
    parent = select(Message.id, Message.parent_id).where(
        Message.id == up.c.parent_id,
        Message.id > above,
        Message.id < up.c.id,  # a parent is older: no loop, whatever the rows say
    )
    up = up.union_all(parent)
    return list(
        session.execute(
            select(
                Message.id,
                Message.parent_id,
                Message.role,
                Message.content,
                Message.created_at,
                Message.tokens,
                Message.status,
            )
            .join(up, up.c.id == Message.id)
            .order_by(Message.id)
        )
    )


def message_in(
    session: Session,
    conversation: Conversation,
    message_id: int,
    *,
    role: MessageRole | None = None,
) -> Message:
    """A shown message of this conversation (of `role`, if given); `InvalidInput` otherwise,
    with the same sentence whether it is another's, replaced or missing."""
    message = session.get(Message, message_id)
    if (
        message is None
        or message.conversation_id != conversation.id
        or message.status is MessageStatus.SUPERSEDED
        or (role is not None and message.role is not role)
    ):
        raise InvalidInput("That message is not one of this conversation's.")
    return message


def advance(conversation: Conversation, message: Message) -> None:
    """Show the branch of a message just stored (flushed: it has its id) when the branch
    shown ended at its parent (or there was none), so an answer that lands after its
    user switched branches does not pull the page away."""
    if conversation.active_leaf_id is None or conversation.active_leaf_id == message.parent_id:
        conversation.active_leaf_id = message.id


def shown_path(tree: Tree, active: int | None) -> Sequence[int]:
    return tree.path(tree.leaf(active))


__all__ = [
    "Branching",
    "Node",
    "Tree",
    "advance",
    "load_tree",
    "message_in",
    "path_rows",
    "shown_path",
]
