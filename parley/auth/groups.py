"""Groups of users, which documents are shared with. Admins manage them; anyone's own
groups are readable by the services that filter what they may see."""

from __future__ import annotations

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from parley.auth.accounts import validate_name
from parley.core.audit_events import GroupCreated, GroupMemberAdded, GroupMemberRemoved
from parley.core.domain import Principal, require_admin
from parley.core.errors import InvalidInput, NotFound, StorageConflict
from parley.store.audit import Actor, actor_of, append_in
from parley.store.db import Database
from parley.store.models import Group, GroupMember, User

ONLY_ADMINS = "Only administrators manage groups."


class GroupService:
    def __init__(self, database: Database) -> None:
        self._db = database

    def create(self, principal: Principal, name: str) -> int:
        require_admin(principal, ONLY_ADMINS)
        name = validate_name(name)
        try:
            with self._db.session(write_lock=True) as session:
                group = Group(name=name)
                session.add(group)
                session.flush()
                append_in(
                    session, GroupCreated(group_id=group.id, group=name), **actor_of(principal)
                )
                return group.id
        except StorageConflict as exc:
            raise InvalidInput(f"A group named {name!r} already exists.") from exc

    def assign(self, principal: Principal, group: str, user: str) -> None:
        require_admin(principal, ONLY_ADMINS)
        with self._db.session(write_lock=True) as session:
            group_id, user_id = group_id_named(session, group), _user_id(session, user)
            add_member(session, (group_id, group), (user_id, user), actor_of(principal))

    def remove(self, principal: Principal, group: str, user: str) -> None:
        """Take a user out of a group: documents shared with it vanish from their very
        next search (every search reads the memberships afresh)."""
        require_admin(principal, ONLY_ADMINS)
        with self._db.session(write_lock=True) as session:
            group_id, user_id = group_id_named(session, group), _user_id(session, user)
            remove_member(session, (group_id, group), (user_id, user), actor_of(principal))

    def names_for(self, principal: Principal) -> list[str]:
        """The groups a principal may share documents with: their own (admins: all)."""
        with self._db.session() as session:
            query = select(Group.name).order_by(Group.name)
            if not principal.is_admin:
                query = query.where(Group.id.in_(groups_of(session, principal.user_id)))
            return list(session.scalars(query))

    def list_all(self, principal: Principal) -> list[tuple[str, list[str]]]:
        """Every group and its members' names: admins only."""
        require_admin(principal, ONLY_ADMINS)
        with self._db.session() as session:
            groups = session.scalars(select(Group).order_by(Group.name)).all()
            rows = session.execute(
                select(GroupMember.group_id, User.name).join(User, User.id == GroupMember.user_id)
            ).all()
        members: dict[int, list[str]] = {}
        for group_id, name in rows:
            members.setdefault(group_id, []).append(name)
        return [(g.name, sorted(members.get(g.id, []))) for g in groups]


def add_member(
    session: Session,
    group: tuple[int, str],
    user: tuple[int, str],
    actor: Actor,
) -> None:
    """Put a user (id, name) in a group (id, name), on record, in the caller's
    transaction; nothing if they are in it already."""
    if session.get(GroupMember, (group[0], user[0])) is None:
        session.add(GroupMember(group_id=group[0], user_id=user[0]))
        append_in(
            session,
            GroupMemberAdded(group_id=group[0], group=group[1], user=user[1]),
            **actor,
            about_id=user[0],
        )


def remove_member(
    session: Session,
    group: tuple[int, str],
    user: tuple[int, str],
    actor: Actor,
) -> None:
    """Take a user out of a group, on record, in the caller's transaction."""
    removed = session.execute(
        delete(GroupMember).where(GroupMember.group_id == group[0], GroupMember.user_id == user[0])
    )
    if removed.rowcount:  # type: ignore[attr-defined]
        append_in(
            session,
            GroupMemberRemoved(group_id=group[0], group=group[1], user=user[1]),
            **actor,
            about_id=user[0],
        )


def groups_of(session: Session, user_id: int) -> set[int]:
    return set(session.scalars(select(GroupMember.group_id).where(GroupMember.user_id == user_id)))


def group_id_named(session: Session, name: str) -> int:
    """The id of the group named `name`, or `NotFound` with a sentence."""
    found = session.scalar(select(Group.id).where(Group.name == name.strip()))
    if found is None:
        raise NotFound(user_message=f"There is no group named {name.strip()!r}.")
    return found


def _user_id(session: Session, name: str) -> int:
    found = session.scalar(select(User.id).where(User.name == name.strip()))
    if found is None:
        raise NotFound(user_message=f"There is no user named {name.strip()!r}.")
    return found


__all__ = ["GroupService", "group_id_named", "groups_of"]
