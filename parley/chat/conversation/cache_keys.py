"""The response cache's key for a chat turn (`parley.core.llm.CacheKey`), made from what
the prompt holds logically, never from its rendering (whose envelopes carry random
boundaries): the stored turns in it by their texts' hashes, the summary by its version,
the passages by their documents' content hashes and chunks, the images by their bytes'
hashes, and the operator's system prompt, model, temperature and answer limit. The
scope is the user, their role and groups, and the versions of the documents the answer
drew on: a cached answer never reaches anyone who could not have produced it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from parley.core.domain import Principal
from parley.core.llm import CacheKey
from parley.core.records import DocumentSource
from parley.memory import ContextWindow, Turn
from parley.store.models import Document, GroupMember


def _digest(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def turn_cache_key(
    session: Session,
    principal: Principal,
    *,
    model: str,
    temperature: float,
    max_tokens: int,
    context: ContextWindow,
    history: Sequence[Turn],
    question: str,
    sources: Sequence[DocumentSource],
    conversation_id: int | None,
) -> CacheKey:
    groups = sorted(
        session.scalars(
            select(GroupMember.group_id).where(GroupMember.user_id == principal.user_id)
        ).all()
    )
    drawn = sorted({s.document_id for s in sources})
    versions = dict(
        session.execute(select(Document.id, Document.sha256).where(Document.id.in_(drawn))).all()
    )
    scope = _digest(
        {
            "user": principal.user_id,
            "role": principal.role.value,
            "groups": groups,
            "documents": [[d, versions.get(d)] for d in drawn],
        }
    )
    texts = {t.id: (t.role, hashlib.sha256(t.content.encode()).hexdigest()) for t in history}
    images = [hashlib.sha256(i.data).hexdigest() for m in context.messages for i in m.images]
    logical = {
        "model": model,
        "temperature": temperature,
        "max_tokens": max_tokens,
        "system": context.system,
        "strategy": context.strategy,
        "turns": [texts.get(i, ("?", str(i))) for i in context.turn_ids],
        "summary": None
        if context.summary_version is None
        else [conversation_id, context.summary_version, context.summary_covers],
        "passages": [[s.document_id, versions.get(s.document_id), s.chunks] for s in sources],
        "images": images,
    }
    return CacheKey(
        scope=scope,
        context=_digest(logical),
        question=" ".join(question.split()),
        documents=tuple(drawn),
    )


__all__ = ["turn_cache_key"]
