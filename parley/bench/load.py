"""Parley under load through the real server: users chatting through the proxy.

For each number of app processes, the local cluster (`deploy/cluster.py`: PostgreSQL, a
Chroma server, the processes, HAProxy with TLS) starts with the fake Messages API
streaming `--words` words `--word-delay-ms` apart, and the provider's rate limits lifted
(they model an API tier, not the server; `--env` sets them). Then, for each number of
users, that many users (spread over `--drivers` worker processes) each sign in and chat
for `--seconds`: send a message, watch the answer stream in, think `--think-s`, send
the next. A user speaks Streamlit's WebSocket protocol as its page would
(`parley/bench/protocol_user.py`, the default), or is a headless Chromium page
(`--driver browser`, as Streamlit's own load tests drive browsers; on a small machine
the browsers take the cores the server needs).

Per run it reports, as the user's end of the connection sees them, the time from sending
a message to the first text of the answer and to the whole answer, stored and shown
(p50 / p95); answers completed; errors (an
answer that never finished, an error on the page, a refused sign-in); messages lost
(sent, but with no stored answer in the database afterwards); the app processes' memory
per active session (resident memory over the idle baseline, divided by the users) and
their CPU time per answer; and, for protocol users, where the first text waited: the
page's run up to the chat box that reads the message ("page run").

    .venv/bin/python -m parley.bench.load --users 1 4 8 10 12 16 --processes 1 2 --seconds 45
    .venv/bin/python -m parley.bench.load --url https://parley.example --users 4 --seconds 30

With `--json`, each run also prints one JSON object on a line of its own, the last line
being the last run's (`users`, `processes`, `completed`, `errors`, `lost`,
`ttft_p50_ms`, `ttft_p95_ms`, `full_p50_ms`, `full_p95_ms`, `page_p50_ms`,
`page_p95_ms`, `stored_p50_ms`, `stored_p95_ms`, `rss_mb_per_session`,
`cpu_s_per_answer`). With `--url`, the target is an existing Parley whose users
`load-user-N` (password `--password`) exist; its certificate is checked against the
system's authorities (or `--cafile`); the database and process figures are left out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from parley.bench.browser_user import browser_user, chromium
from parley.bench.protocol_user import UserResult, protocol_user, tls_context

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "deploy" / "cluster.py"
BIN = Path(sys.executable).parent
PASSWORD = "load-test-password-1"
# The provider's rate limits model the organisation's API tier (50 requests a minute by
# default), not what a server can do: a load test at their defaults measures the limit
# (answers wait for the bucket, then are refused). They are lifted unless `--env` sets
# them; docs/operators.md says how to set them for a real tier.
UNLIMITED = {
    "PARLEY_REQUESTS_PER_MINUTE": "100000",
    "PARLEY_INPUT_TOKENS_PER_MINUTE": "1000000000",
    "PARLEY_OUTPUT_TOKENS_PER_MINUTE": "1000000000",
}
ANSWER_TIMEOUT_S = 120.0


async def _drive(
    url: str, names: list[str], args: argparse.Namespace, cafile: Path | None
) -> list[UserResult]:
    # Users arrive over the first two seconds, not in one instant.
    async def staggered(
        i: int, name: str, user: Callable[[str], Awaitable[UserResult]]
    ) -> UserResult:
        await asyncio.sleep(2.0 * i / max(1, len(names)))
        return await user(name)

    if args.driver == "protocol":
        tls = tls_context(cafile)
        return list(
            await asyncio.gather(
                *(
                    staggered(i, n, lambda name: protocol_user(url, name, args, tls))
                    for i, n in enumerate(names)
                )
            )
        )
    async with chromium() as browser:
        return list(
            await asyncio.gather(
                *(
                    staggered(i, n, lambda name: browser_user(browser, url, name, args))
                    for i, n in enumerate(names)
                )
            )
        )


def _driver(
    url: str, names: list[str], args: argparse.Namespace, cafile: Path | None, out: Any
) -> None:
    # The users run beside the server on this machine; people's browsers would not.
    # Niced, they take what the server leaves, so the figures are the server's.
    os.nice(args.driver_nice)
    results = asyncio.run(_drive(url, names, args, cafile))
    out.put([asdict(r) for r in results])


def _cluster(folder: Path, *command: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARLEY_")}
    done = subprocess.run(
        [sys.executable, str(CLUSTER), "--dir", str(folder), *command],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"load: the cluster did not {command[0]}: {done.stderr.strip()}")


def _app_env(state: dict[str, Any]) -> dict[str, str]:
    """The app's environment, as `deploy/cluster.py` gives it to its processes."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("parley_cluster", CLUSTER)
    assert spec is not None and spec.loader is not None
    cluster = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cluster)
    env: dict[str, str] = cluster.app_env(state, 0)
    return env


def _add_users(state: dict[str, Any], count: int, password: str) -> None:
    env = _app_env(state)
    for i in range(count):
        subprocess.run(
            [str(BIN / "parley"), "user", "add", f"load-user-{i}"],
            input=password + "\n",
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,  # already there from a smaller run
        )


def _proc_stats(pids: list[int]) -> tuple[float, float]:
    """(resident MB, CPU seconds) of the processes and their children."""
    rss_kb = 0.0
    ticks = 0.0
    hz = os.sysconf("SC_CLK_TCK")
    for pid in _with_children(pids):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        rss_kb += next(
            float(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS")
        )
        ticks += float(fields[11]) + float(fields[12])  # utime, stime
    return rss_kb / 1024, ticks / hz


def _with_children(pids: list[int]) -> list[int]:
    found = list(pids)
    for pid in pids:
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            continue
        found += _with_children([int(c) for c in children])
    return found


def _stored_answers(database_url: str) -> tuple[int, int]:
    """(user messages, assistant answers with text) now in the database."""
    from sqlalchemy import create_engine, text

    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            users = connection.execute(
                text("SELECT count(*) FROM messages WHERE role = 'user'")
            ).scalar_one()
            answers = connection.execute(
                text("SELECT count(*) FROM messages WHERE role = 'assistant' AND content <> ''")
            ).scalar_one()
    finally:
        engine.dispose()
    return int(users), int(answers)


def _server_first_token(url: str) -> tuple[float, float]:
    """(sum of seconds, count) of the chat calls' time to first token, as `/metrics`
    through the proxy says (from the call's start, its wait in the queue included)."""
    import ssl
    import urllib.request

    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the cluster's self-signed certificate
    total = count = 0.0
    with urllib.request.urlopen(f"{url}/metrics", timeout=10, context=context) as answer:
        for line in answer.read().decode().splitlines():
            if 'purpose="chat"' not in line:
                continue
            if line.startswith("parley_time_to_first_token_seconds_sum"):
                total = float(line.rsplit(" ", 1)[1])
            elif line.startswith("parley_time_to_first_token_seconds_count"):
                count = float(line.rsplit(" ", 1)[1])
    return total, count


def _ms(values: list[float], q: float) -> int | None:
    """The `q` quantile (nearest rank) in milliseconds; None when nothing was measured."""
    if not values:
        return None
    ordered = sorted(values)
    return round(1000 * ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))])


def run_once(
    url: str, users: int, processes: int, args: argparse.Namespace, state: dict[str, Any] | None
) -> dict[str, Any]:
    names = [f"load-user-{i}" for i in range(users)]
    drivers = max(1, min(args.drivers, users))
    pids = list(state["app_pids"]) if state else []
    before_db = _stored_answers(state["database_url"]) if state else (0, 0)
    rss_idle, cpu_before = _proc_stats(pids) if state else (0.0, 0.0)
    server_before = _server_first_token(url) if state else (0.0, 0.0)
    cafile = _cafile(state) or (Path(args.cafile) if args.cafile else None)
    spawn = multiprocessing.get_context("spawn")
    queue = spawn.Queue()
    workers = [
        spawn.Process(target=_driver, args=(url, names[d::drivers], args, cafile, queue))
        for d in range(drivers)
    ]
    peak_rss = rss_idle
    for worker in workers:
        worker.start()
    collected: list[list[dict[str, Any]]] = []
    while len(collected) < drivers:
        try:
            collected.append(queue.get(timeout=1.0))
        except Exception:
            if state:
                peak_rss = max(peak_rss, _proc_stats(pids)[0])
            if not any(w.is_alive() for w in workers) and queue.empty():
                break
    for worker in workers:
        worker.join(30)
    results = [UserResult(**r) for batch in collected for r in batch]
    rss_busy, cpu_after = _proc_stats(pids) if state else (0.0, 0.0)
    peak_rss = max(peak_rss, rss_busy)
    ttft = [t for r in results for t in r.ttft_s]
    full = [t for r in results for t in r.full_s]
    page = [t for r in results for t in r.page_s]
    stored = [t for r in results for t in r.stored_s]
    sent = sum(r.sent for r in results)
    errors = sum(len(r.errors) for r in results) + users - len(results)
    lost = None
    server_ttft_ms = None
    if state:
        server_after = _server_first_token(url)
        calls = server_after[1] - server_before[1]
        if calls:
            server_ttft_ms = round(1000 * (server_after[0] - server_before[0]) / calls)
        time.sleep(2.0)  # answers are stored after their stream; let the last ones land
        after_db = _stored_answers(state["database_url"])
        asked, answered = after_db[0] - before_db[0], after_db[1] - before_db[1]
        lost = max(0, asked - answered) + max(0, sent - asked)
    return {
        "users": users,
        "processes": processes,
        "sent": sent,
        "completed": len(full),
        "errors": errors,
        "lost": lost,
        "ttft_p50_ms": _ms(ttft, 0.5),
        "ttft_p95_ms": _ms(ttft, 0.95),
        "server_ttft_mean_ms": server_ttft_ms,
        # Where the first text waits (protocol users): the page's run up to the chat box,
        # which reads the message, and the question stored and shown.
        "page_p50_ms": _ms(page, 0.5),
        "page_p95_ms": _ms(page, 0.95),
        "stored_p50_ms": _ms(stored, 0.5),
        "stored_p95_ms": _ms(stored, 0.95),
        "full_p50_ms": _ms(full, 0.5),
        "full_p95_ms": _ms(full, 0.95),
        "rss_mb_per_session": round((peak_rss - rss_idle) / users, 1) if state else None,
        "server_rss_mb": round(peak_rss) if state else None,
        "cpu_s_per_answer": round((cpu_after - cpu_before) / max(1, len(full)), 2)
        if state
        else None,
        "error_kinds": sorted({e.split(":", 1)[1].strip() for r in results for e in r.errors})[:5],
    }


def _warm_up(state: dict[str, Any], args: argparse.Namespace) -> None:
    """One chat on each process directly (not through the proxy): the first chat in a
    process loads the embedding model; that is start-up, not load."""
    _add_users(state, 1, args.password)
    for port in state["app_ports"]:
        warm = argparse.Namespace(**{**vars(args), "seconds": 0.0, "min_messages": 1})
        asyncio.run(_drive(f"http://127.0.0.1:{port}", ["load-user-0"], warm, None))


def _cafile(state: dict[str, Any] | None) -> Path | None:
    """The local cluster's self-signed certificate, which its users trust (and nothing
    else); for `--url`, the system's authorities (or `--cafile`)."""
    return Path(state["dir"]) / "tls" / "parley.crt" if state else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m parley.bench.load", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--users", type=int, nargs="+", default=[1, 4, 8, 12])
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--seconds", type=float, default=60.0, help="each user chats this long")
    parser.add_argument(
        "--think-s", type=float, default=2.0, help="pause between a user's messages"
    )
    parser.add_argument("--words", type=int, default=150, help="words in each fake answer")
    parser.add_argument("--word-delay-ms", type=float, default=30.0, help="pace of the fake answer")
    parser.add_argument(
        "--driver",
        choices=["protocol", "browser"],
        default="protocol",
        help="users speak Streamlit's WebSocket protocol, or are headless Chromium pages",
    )
    parser.add_argument("--drivers", type=int, default=2, help="worker processes of users")
    parser.add_argument(
        "--driver-nice", type=int, default=10, help="niceness of the users' processes (0: none)"
    )
    parser.add_argument("--url", help="load an existing Parley instead of starting a cluster")
    parser.add_argument("--password", default=PASSWORD)
    parser.add_argument(
        "--cafile", help="with --url: the certificate authority to trust (else the system's)"
    )
    parser.add_argument(
        "--env",
        nargs=2,
        action="append",
        metavar=("NAME", "VALUE"),
        help="app settings",
    )
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--shots", help="folder for a screenshot of each failed answer")
    args = parser.parse_args(argv)
    args.min_messages = 0
    args.answer_timeout_s = ANSWER_TIMEOUT_S
    rows: list[dict[str, Any]] = []
    plans = [(None, args.users)] if args.url else [(p, args.users) for p in args.processes]
    for processes, user_counts in plans:
        state = None
        folder = Path(tempfile.mkdtemp(prefix="parley-load-"))
        folder.chmod(0o755)
        if processes is not None:
            settings = {**UNLIMITED, **dict(args.env or [])}
            extra = [x for pair in settings.items() for x in ("--env", *pair)]
            _cluster(
                folder / "cluster",
                "up",
                "--processes",
                str(processes),
                "--port",
                "0",
                "--fake-claude",
                "--words",
                str(args.words),
                "--word-delay-ms",
                str(args.word_delay_ms),
                *extra,
            )
            state = json.loads((folder / "cluster" / "state.json").read_text())
        try:
            url = str(args.url or (state or {})["url"])
            if state:
                _warm_up(state, args)
                _add_users(state, max(user_counts), args.password)
            for users in user_counts:
                row = run_once(url, users, processes or 0, args, state)
                rows.append(row)
                _say(_table([row], header=len(rows) == 1))
                if args.json:
                    _say(json.dumps(row))
        finally:
            if state:
                _cluster(folder / "cluster", "down")
    _say("")
    _say(_table(rows, header=True))
    if args.json:
        _say(json.dumps(rows[-1]))
    return 0


def _table(rows: list[dict[str, Any]], *, header: bool) -> str:
    lines = []
    if header:
        lines += [
            "| processes | users | answers | errors | lost | first text p50 / p95 (s) "
            "| whole answer p50 / p95 (s) | page run p50 / p95 (s) | MB per session "
            "| CPU s per answer |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
    for r in rows:
        lines.append(
            f"| {r['processes'] or '—'} | {r['users']} | {r['completed']} | {r['errors']} "
            f"| {r['lost'] if r['lost'] is not None else '—'} "
            f"| {_s(r['ttft_p50_ms'], 2)} / {_s(r['ttft_p95_ms'], 2)} "
            f"| {_s(r['full_p50_ms'], 1)} / {_s(r['full_p95_ms'], 1)} "
            f"| {_s(r['page_p50_ms'], 2)} / {_s(r['page_p95_ms'], 2)} "
            f"| {r['rss_mb_per_session'] if r['rss_mb_per_session'] is not None else '—'} "
            f"| {r['cpu_s_per_answer'] if r['cpu_s_per_answer'] is not None else '—'} |"
        )
    return "\n".join(lines)


def _s(ms: int | None, digits: int) -> str:
    return "—" if ms is None else f"{ms / 1000:.{digits}f}"


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    raise SystemExit(main())
