"""Values tests share (fixtures live in conftest.py)."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from parley.chat.oversight.audit_trail import record_facts
from parley.core.domain import Principal, Role
from parley.store.audit import AuditChain, Checkpoint, Verified
from parley.store.db import Database


# The operator: an administrator who is no account, as the CLI acts. Tests set users up so.
def free_port() -> int:
    """A TCP port on 127.0.0.1 nothing listens on (for servers the tests start)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop(process: subprocess.Popen[Any], timeout: float = 15) -> None:
    """End a server a test started: politely, then for good."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout)


ROOT = Principal(user_id=0, name="(operator)", role=Role.ADMIN)

# Data written by others (BIPIA, LoCoMo), read at run time from beside the checkout.
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def shared_data(name: str) -> Path:
    """The path of `name` in ../shared/data. When it is missing, the test skips on a
    developer's machine but fails under CI (`CI` set, as `make test` sets it): a build
    must never pass by not running the tests that read it."""
    path = SHARED_DATA / name
    if not path.is_file():
        message = f"{path} is not here (data written by others, read from ../shared/data)"
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return path


class FakeClock:
    """A clock for the rate limiter: `sleep` moves it on instead of waiting."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def admitted_by_processes(
    url: str, tmp_path: Path, *, processes: int = 5, per_minute: int = 8, tries: int = 6
) -> tuple[list[int], float]:
    """Start `processes` limiters on one shared bucket, release them together from a
    barrier, and return how many requests each was granted and the seconds it took."""
    script = textwrap.dedent(f"""
        import os, sys, time
        from parley.chat.gateway.admission import DatabaseBucketStore, RateLimiter
        from parley.core.errors import RateLimited
        from parley.store.db import Database
        limiter = RateLimiter(requests_per_minute={per_minute}, input_tokens_per_minute=1e9,
                              output_tokens_per_minute=1e9, max_wait_s=0,
                              store=DatabaseBucketStore(Database({url!r})), clock=time.time)
        open(os.path.join({str(tmp_path)!r}, "ready-" + sys.argv[1]), "w").close()
        while not os.path.exists(os.path.join({str(tmp_path)!r}, "go")):
            time.sleep(0.001)
        granted = 0
        for _ in range({tries}):
            try:
                limiter.acquire(input_tokens=1)
                granted += 1
            except RateLimited:
                pass
        print(granted)
    """)
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(n)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(processes)
    ]
    deadline = time.monotonic() + 60
    while len(list(tmp_path.glob("ready-*"))) < processes and time.monotonic() < deadline:
        time.sleep(0.01)
    started = time.monotonic()
    (tmp_path / "go").touch()  # the barrier: every process starts taking at once
    outputs = [w.communicate(timeout=60) for w in workers]
    elapsed = time.monotonic() - started
    assert all(w.returncode == 0 for w in workers), [err for _, err in outputs]
    return [int(out) for out, _ in outputs], elapsed


def pdf_with_pages(*pages: str) -> bytes:
    """A minimal, valid PDF whose pages each show one line of text (Helvetica)."""
    objects: list[bytes] = []
    kids = " ".join(f"{3 + 2 * i} 0 R" for i in range(len(pages)))
    objects.append(b"<< /Type /Catalog /Pages 2 0 R >>")
    objects.append(f"<< /Type /Pages /Kids [{kids}] /Count {len(pages)} >>".encode())
    font = 3 + 2 * len(pages)
    for i, text in enumerate(pages):
        content = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {4 + 2 * i} 0 R "
            f"/Resources << /Font << /F1 {font} 0 R >> >> >>".encode()
        )
        objects.append(b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream")
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n" % number + body + b"\nendobj\n")
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    for offset in offsets:
        out.write(b"%010d 00000 n \n" % offset)
    out.write(
        b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    )
    return out.getvalue()


def audit_records(database: Database) -> list[dict[str, Any]]:
    """Every audit record, oldest first, as an export line's object (data decoded)."""
    return [record.exported() for record in AuditChain(database).records()]


def verify_audit(database: Database, anchors: Sequence[Checkpoint] = ()) -> Verified:
    """The chain checked as the admin console and `parley audit verify` check it."""
    return AuditChain(database).verify(record_facts, anchors)
