"""One Parley process for the multi-process tests, driven by JSON lines on stdin.

Run as `python -m tests.wiring.actor` with the settings in the environment (the shared
database, secrets and Chroma server). It builds its own services, as an app process
does, with the hashing embedder on the shared Chroma server, then answers each line
`{"op": ..., ...}` with one line: `{"ok": value}` or `{"error": sentence, "kind": type}`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from parley.chat.conversation.conversations import owned_conversation
from parley.core.background import BackgroundWork
from parley.core.config import get_settings
from parley.core.domain import Principal
from parley.core.errors import ParleyError
from parley.retrieval.document_index import DocumentIndex
from parley.retrieval.embeddings import HashingEmbedder
from parley.retrieval.vector_store import VectorStore
from parley.wiring.services import Services, build_services


def main() -> None:
    settings = get_settings()
    assert settings.chroma_url, "the actors share a Chroma server"
    url = urlsplit(settings.chroma_url.get_secret_value())
    index = DocumentIndex(
        embedder=HashingEmbedder(), store=VectorStore.http(url.hostname or "", url.port or 80)
    )
    services = build_services(
        settings, background=BackgroundWork(workers=0), document_index=index, eager=False
    )
    principals: dict[str, Principal] = {}

    def who(name: str) -> Principal:
        if name not in principals:  # every actor's users have the password name-password
            principals[name] = services.accounts.authenticate(
                name=name, password=f"{name}-password"
            )
        return principals[name]

    ops: dict[str, Callable[..., Any]] = {
        "send": lambda user, conversation, text: _send(services, who(user), conversation, text),
        "retry": lambda user, conversation: "".join(services.chat.retry(who(user), conversation)),
        "turns": lambda user, conversation: _turns(services, who(user), conversation),
        "titles": lambda user: [c.title for c in services.conversations.list_for(who(user))],
        "rename": lambda user, conversation, title: (
            services.conversations.rename(who(user), conversation, title).title
        ),
        "delete": lambda user, conversation: services.conversations.delete(who(user), conversation),
        "sign_in": lambda user: _cookie(services, who(user)),
        "resume": lambda cookie: _resumed(services, cookie),
        "sign_out_everywhere": lambda user: services.sessions.end_all(who(user).user_id),
        "share": lambda user, document, group: (
            services.documents.share(who(user), document, group=group).id
        ),
        "unshare": lambda user, document, group: (
            services.documents.unshare(who(user), document, group=group).id
        ),
        "search": lambda user, query: sorted(
            {h.document_id for h in services.documents.search(who(user), query)}
        ),
        "documents": lambda user: sorted(d.id for d in services.documents.list_for(who(user))),
    }
    say({"ok": "ready"})
    for line in sys.stdin:
        request = json.loads(line)
        op = request.pop("op")
        try:
            answer: dict[str, Any] = {"ok": ops[op](**request)}
        except ParleyError as exc:
            answer = {"error": exc.user_message, "kind": type(exc).__name__}
        say(answer)
    services.close()


def say(answer: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(answer) + "\n")
    sys.stdout.flush()


def _send(services: Services, principal: Principal, conversation: int | None, text: str) -> Any:
    reply = services.chat.send(principal, conversation, text)
    answer = "".join(reply)
    return {"conversation": reply.conversation_id, "answer": answer}


def _turns(services: Services, principal: Principal, conversation_id: int) -> list[str]:
    """The turns a prompt would get now, through this process's history cache."""
    with services._database.session() as session:
        conversation = owned_conversation(session, principal, conversation_id)
        leaf = conversation.active_leaf_id
        return [turn.content for turn in services._history.turns(session, conversation, leaf)]


def _cookie(services: Services, principal: Principal) -> str:
    _, ticket = services.sessions.start(principal)
    cookie = services.sessions.exchange(ticket)
    assert cookie is not None
    return cookie


def _resumed(services: Services, cookie: str) -> str | None:
    resumed = services.sessions.resume(cookie)
    return resumed.principal.name if resumed is not None else None


if __name__ == "__main__":
    main()
