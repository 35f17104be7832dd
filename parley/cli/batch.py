"""`parley batch …`: batch jobs (document summaries, conversation summaries, titles).

With Claude a job goes through the Message Batches API: `submit` sends it, `status`
shows it, `collect` asks whether it has ended and applies the results (the app does
this by itself every `PARLEY_BATCH__POLL_S`). Without a key the job runs on the local
model, and `submit` waits for it, one line per item done.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from parley.cli.common import OPERATOR
from parley.cli.common import services as _services
from parley.core.errors import ProviderError

if TYPE_CHECKING:
    from parley.chat.batch.service import JobView

KINDS = ("documents", "summaries", "titles")


def batch_commands(commands: Any) -> None:
    batch = commands.add_parser("batch", help="batch jobs (admins)").add_subparsers(required=True)
    submit = batch.add_parser("submit", help="plan and send a job")
    submit.add_argument(
        "kind",
        choices=KINDS,
        help="documents: summarise documents without a summary; summaries: write long "
        "conversations' summaries again; titles: name conversations still named after "
        "their first message",
    )
    submit.add_argument(
        "--wait", action="store_true", help="with Claude: poll until the batch has ended"
    )
    submit.add_argument("--every", type=float, default=30.0, help="seconds between polls")
    submit.set_defaults(func=_submit)
    status = batch.add_parser("status", help="a job, or the newest jobs")
    status.add_argument("job", type=int, nargs="?", metavar="JOB_ID")
    status.add_argument("--json", action="store_true", help="one JSON object per job")
    status.set_defaults(func=_status)
    collect = batch.add_parser("collect", help="apply an ended batch's results now")
    collect.add_argument("job", type=int, metavar="JOB_ID")
    collect.add_argument("--wait", action="store_true", help="poll until the job is done")
    collect.add_argument("--every", type=float, default=30.0, help="seconds between polls")
    collect.set_defaults(func=_collect)
    cancel = batch.add_parser("cancel", help="stop an open job")
    cancel.add_argument("job", type=int, metavar="JOB_ID")
    cancel.set_defaults(func=_cancel)


def _line(job: JobView) -> str:
    where = "Message Batches API" if job.runner == "api" else "local model"
    extra = []
    if job.skipped:
        extra.append(f"{job.skipped} skipped")
    if job.failed:
        extra.append(f"{job.failed} failed")
    tail = f" ({', '.join(extra)})" if extra else ""
    note = f" {job.note}" if job.note else ""
    if job.errors:
        note += f" Failed: {'; '.join(job.errors)}."
    return (
        f"Job {job.id} ({job.kind}, {where}, {job.model}): {job.shown_state}, "
        f"{job.done} of {job.items} done{tail}, round {job.round}, "
        f"{job.input_tokens + job.output_tokens:,} tokens, ${job.cost_usd:.4f}.{note}"
    )


def _as_json(job: JobView) -> dict[str, object]:
    return {
        "id": job.id,
        "kind": job.kind,
        "runner": job.runner,
        "state": job.state,
        "model": job.model,
        "round": job.round,
        "items": job.items,
        "done": job.done,
        "skipped": job.skipped,
        "failed": job.failed,
        "input_tokens": job.input_tokens,
        "output_tokens": job.output_tokens,
        "cost_usd": round(job.cost_usd, 6),
        "created_at": _utc(job.created_at),
        "ended_at": _utc(job.ended_at) if job.ended_at else None,
        "note": job.note,
        "errors": list(job.errors),
    }


def _utc(moment: datetime) -> str:
    """ISO 8601 in UTC, whichever database gave it (SQLite keeps no zone)."""
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).isoformat()


def _code(job: JobView) -> int:
    """0 once every item is done or skipped; 1 for failed items, or a job still open."""
    return 0 if job.state == "done" and not job.failed else 1


def _submit(args: argparse.Namespace) -> int:
    batches = _services().batches
    job = batches.submit(OPERATOR, args.kind)
    if job is None:
        print(f"Nothing needs {args.kind} now: no job was made.")
        return 0
    print(f"Submitted job {job.id}: {job.items} item(s).")
    if job.state == "failed" or (job.state == "planned" and job.note):
        print(f"parley: {job.note}", file=sys.stderr)  # refused: said, and the code says it
        return 1
    if job.runner == "local":
        return _follow_local(job.id)
    if args.wait:
        return _wait(job.id, args.every)
    print(f"Follow it with `parley batch status {job.id}`; the app collects it when it ends.")
    return 0


def _follow_local(job_id: int) -> int:
    """The local model works on the pool: a line each time another item is done."""
    batches = _services().batches
    seen = -1
    looked = time.monotonic()
    while True:
        if time.monotonic() - looked > 5:  # a run paused (the model busy) goes on
            batches.poll()
            looked = time.monotonic()
        job = batches.job(OPERATOR, job_id)
        if job.finished != seen:
            seen = job.finished
            print(f"{job.finished} of {job.items}…", flush=True)
        if not job.is_open:
            print(_line(job))
            return _code(job)
        time.sleep(0.5)


def _wait(job_id: int, every: float) -> int:
    batches = _services().batches
    while True:
        try:
            job = batches.collect(OPERATOR, job_id)
        except ProviderError as exc:  # the API away a moment: the job is kept, ask again
            if not exc.retryable:
                raise
            print(f"parley: {exc.user_message} Trying again.", file=sys.stderr, flush=True)
        else:
            print(_line(job), flush=True)
            if not job.is_open:
                return _code(job)
        time.sleep(max(1.0, every))


def _status(args: argparse.Namespace) -> int:
    batches = _services().batches
    jobs = [batches.job(OPERATOR, args.job)] if args.job is not None else batches.jobs(OPERATOR)
    if not jobs:
        print("No batch jobs yet.")
        return 0
    for job in jobs:
        print(json.dumps(_as_json(job)) if args.json else _line(job))
    return 0


def _collect(args: argparse.Namespace) -> int:
    if args.wait:
        return _wait(args.job, args.every)
    print(_line(_services().batches.collect(OPERATOR, args.job)))
    return 0


def _cancel(args: argparse.Namespace) -> int:
    job = _services().batches.cancel(OPERATOR, args.job)
    print(_line(job))
    return 0


__all__ = ["batch_commands"]
