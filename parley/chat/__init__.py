"""Chat: everything between a user's question and a stored, audited answer, in four jobs.

- `parley.chat.gateway`: the one path of every model call — providers, admission
  (queue and token buckets), the limited provider that meters each call, usage and quotas.
- `parley.chat.documents`: uploaded documents — their lifecycle, who may see them, search
  hits and the passages put before a question.
- `parley.chat.conversation`: the conversation itself — a turn from question to stored
  answer, its prompt, history, titles, summaries, upkeep and the strategy lab.
- `parley.chat.oversight`: what admins do — review, the audit trail as they read it, erasure.

The import-linter contract "Chat by job" keeps the order: oversight may use the
conversation, which may use documents and the gateway; never the other way round.
"""
