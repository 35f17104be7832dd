"""A whole Parley cluster on 127.0.0.1: PostgreSQL, a Chroma server, N app processes and
HAProxy in front (TLS, and each browser kept on one process), started and stopped cleanly.

    .venv/bin/python deploy/cluster.py up --processes 2        # https://127.0.0.1:8443
    .venv/bin/python deploy/cluster.py status
    .venv/bin/python deploy/cluster.py down
    .venv/bin/python deploy/cluster.py stop postgres   # a drill: stop one part (postgres,
    .venv/bin/python deploy/cluster.py start postgres  # chroma, app-N), then start it again

Everything lives in one folder (`--dir`, default `.cluster/` in the checkout): the
database's files, Chroma's, each process's data dir and log, the shared secrets (made
once, readable by the owner only), a self-signed certificate and the HAProxy
configuration rendered from `deploy/haproxy.cfg.in`. `up` returns when the proxy
answers `/readyz`; `state.json` there names every process (the load test and the fault
tests read it). `--fake-claude` starts the fake Messages API and points the processes at
it, streaming `--words` words `--word-delay-ms` apart.

Every app process gets the same session secret and audit key (the secrets directory),
`PARLEY_LIMITER_STORE=database` (one set of rate limits and one concurrency limit for
all), its own data dir, and a shared `PROMETHEUS_MULTIPROC_DIR` (so `/metrics` through the
proxy sums the host). The schema is upgraded once, before the processes start.

Needs Debian's `postgresql` and `haproxy` and `openssl` (`make system-deps` installs
them); run as root, PostgreSQL runs as the `postgres` user.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PG_BINS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)


class ClusterError(Exception):
    """A step of the cluster failed; the message says which and where its log is."""


def _tool(name: str) -> str:
    found = shutil.which(name) or next(
        (str(b / name) for b in PG_BINS if (b / name).exists()), None
    )
    if found is None:
        raise ClusterError(f"{name} is not installed (make system-deps installs it).")
    return found


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _as_postgres(command: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


def _wait_for(url: str, what: str, log: Path, seconds: float = 90, process: Any = None) -> None:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the cluster's own self-signed certificate
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2, context=context) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        if process is not None and process.poll() is not None:
            raise ClusterError(f"{what} stopped while starting; see {log}.")
        if time.monotonic() > deadline:
            raise ClusterError(f"{what} did not answer {url} in {seconds:.0f} s; see {log}.")
        time.sleep(0.25)


def _spawn(command: list[str], log: Path, env: dict[str, str] | None = None) -> int:
    """Start a server in its own session (so `down` can end it and its children)."""
    with log.open("ab") as out:
        process = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
            start_new_session=True,
        )
    return process.pid


def _secret(path: Path, size: int = 48) -> None:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(size))


def _postgres(folder: Path) -> tuple[int, str]:
    data, port = folder / "pg", free_port()
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
    if not (data / "PG_VERSION").exists():
        made = subprocess.run(
            _as_postgres(
                [_tool("initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"]
            ),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if made.returncode != 0:
            raise ClusterError(
                f"initdb failed (the postgres user must be able to enter {folder}): "
                f"{made.stderr.strip()}"
            )
    start_postgres(folder, port)
    subprocess.run(
        [
            _tool("psql"),
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-U",
            "postgres",
            "-c",
            "CREATE DATABASE parley",
        ],
        capture_output=True,
        timeout=60,
        check=False,  # already there on a second `up`
    )
    return port, f"postgresql+psycopg://postgres@127.0.0.1:{port}/parley"


def start_postgres(folder: Path, port: int) -> None:
    log = folder / "postgres.log"
    started = subprocess.run(
        _as_postgres(
            [
                _tool("pg_ctl"),
                "-D",
                str(folder / "pg"),
                "-l",
                str(log),
                "-w",
                "-o",
                f"-h 127.0.0.1 -p {port} -k {folder} -c max_connections=200",
                "start",
            ]
        ),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if started.returncode != 0:
        raise ClusterError(f"PostgreSQL did not start; see {log}.")


def stop_postgres(folder: Path) -> None:
    subprocess.run(
        _as_postgres([_tool("pg_ctl"), "-D", str(folder / "pg"), "-m", "fast", "stop"]),
        capture_output=True,
        timeout=60,
        check=False,
    )


def start_chroma(state: dict[str, Any]) -> None:
    folder = Path(state["dir"])
    port = state["chroma_port"]
    state["chroma_pid"] = _spawn(
        [
            str(BIN / "chroma"),
            "run",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--path",
            str(folder / "chroma"),
        ],
        folder / "chroma.log",
    )
    state["chroma_url"] = f"http://127.0.0.1:{port}"


def _certificate(folder: Path) -> Path:
    pem = folder / "tls" / "parley.pem"
    if not pem.exists():
        pem.parent.mkdir(parents=True, exist_ok=True)
        key, cert = pem.with_suffix(".key"), pem.with_suffix(".crt")
        subprocess.run(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "30",
                "-subj",
                "/CN=localhost",
                "-addext",
                "subjectAltName=IP:127.0.0.1,DNS:localhost",
                "-keyout",
                str(key),
                "-out",
                str(cert),
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        fd = os.open(pem, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # the key: owner only
        with os.fdopen(fd, "wb") as handle:
            handle.write(cert.read_bytes() + key.read_bytes())
    return pem


def _haproxy_config(
    folder: Path, *, https_port: int, http_port: int, app_ports: list[int], pem: Path
) -> Path:
    servers = "\n".join(
        f"    server p{i} 127.0.0.1:{port} cookie p{i}" for i, port in enumerate(app_ports)
    )
    text = (
        (ROOT / "deploy" / "haproxy.cfg.in")
        .read_text()
        .format(
            bind_address="127.0.0.1",
            https_port=https_port,
            http_port=http_port,
            certificate=pem,
            metrics_from="127.0.0.1",
            servers=servers,
            unavailable_page=ROOT / "deploy" / "unavailable.http",
        )
    )
    path = folder / "haproxy.cfg"
    path.write_text(text)
    return path


def app_env(state: dict[str, Any], index: int) -> dict[str, str]:
    """The environment of app process `index` (also what the fault tests restart with)."""
    folder = Path(state["dir"])
    env = {
        **os.environ,
        "PARLEY_DATABASE_URL": state["database_url"],
        "PARLEY_CHROMA_URL": state["chroma_url"],
        "PARLEY_SECRETS_DIR": str(folder / "secrets"),
        "PARLEY_DATA_DIR": str(folder / f"app-{index}"),
        "PARLEY_LIMITER_STORE": "database",
        "PARLEY_MODELS_DIR": str(folder / "models"),  # the embedding model, built once
        "PROMETHEUS_MULTIPROC_DIR": str(folder / "metrics"),
        "PYTHONUNBUFFERED": "1",
    }
    if state.get("fake_claude_url"):
        env |= {"ANTHROPIC_BASE_URL": state["fake_claude_url"], "PARLEY_ANTHROPIC_MAX_RETRIES": "0"}
        # The fake accepts any key; it is a secret file like a real one would be.
    env.update(state.get("extra_env", {}))
    return env


def start_app(state: dict[str, Any], index: int) -> int:
    folder = Path(state["dir"])
    port = state["app_ports"][index]
    log = folder / f"app-{index}.log"
    pid = _spawn(
        [
            str(BIN / "streamlit"),
            "run",
            "server.py",
            "--server.address",
            "127.0.0.1",
            "--server.port",
            str(port),
            "--server.headless",
            "true",
            "--browser.gatherUsageStats",
            "false",
        ],
        log,
        env=app_env(state, index),
    )
    state["app_pids"][index] = pid
    return pid


def wait_for_app(state: dict[str, Any], index: int, seconds: float = 120) -> None:
    folder = Path(state["dir"])
    port = state["app_ports"][index]
    _wait_for(
        f"http://127.0.0.1:{port}/readyz",
        f"app process {index}",
        folder / f"app-{index}.log",
        seconds,
    )


def up(args: argparse.Namespace) -> dict[str, Any]:
    folder = Path(args.dir).resolve()
    if (folder / "state.json").exists():
        raise ClusterError(f"A cluster is already up in {folder}: `cluster.py down` first.")
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o755)
    for stale in (folder / "metrics",):
        shutil.rmtree(stale, ignore_errors=True)
    (folder / "metrics").mkdir()
    _secret(folder / "secrets" / "session_secret")
    _secret(folder / "secrets" / "audit_key")
    state: dict[str, Any] = {"dir": str(folder), "app_pids": {}, "extra_env": dict(args.env or [])}
    try:
        state["postgres_port"], state["database_url"] = _postgres(folder)
        state["chroma_port"] = free_port()
        start_chroma(state)
        if args.fake_claude:
            fake_port = free_port()
            state["fake_claude_pid"] = _spawn(
                [
                    sys.executable,
                    "-m",
                    "parley.fakes.anthropic_server",
                    "--port",
                    str(fake_port),
                    "--quiet",
                    "--words",
                    str(args.words),
                    "--word-delay-ms",
                    str(args.word_delay_ms),
                ],
                folder / "fake-claude.log",
            )
            state["fake_claude_url"] = f"http://127.0.0.1:{fake_port}"
            _secret(folder / "secrets" / "anthropic_api_key")  # any key: the fake takes it
        _save(folder, state)
        _wait_for(f"{state['chroma_url']}/api/v2/heartbeat", "Chroma", folder / "chroma.log")
        upgraded = subprocess.run(
            [str(BIN / "parley"), "db", "upgrade"],
            env=app_env(state, 0),
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if upgraded.returncode != 0:
            raise ClusterError(f"The schema upgrade failed: {upgraded.stderr.strip()}")
        prepared = subprocess.run(
            [str(BIN / "parley"), "models", "prepare"],
            env=app_env(state, 0),
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if prepared.returncode != 0:
            raise ClusterError(f"Preparing the embedding model failed: {prepared.stderr.strip()}")
        state["app_ports"] = [free_port() for _ in range(args.processes)]
        state["app_pids"] = [0] * args.processes
        for index in range(args.processes):
            start_app(state, index)
        _save(folder, state)
        for index in range(args.processes):
            wait_for_app(state, index)
        https_port, http_port = args.port, args.port + 1 if args.port else 0
        state["https_port"] = https_port or free_port()
        state["http_port"] = http_port or free_port()
        config = _haproxy_config(
            folder,
            https_port=state["https_port"],
            http_port=state["http_port"],
            app_ports=state["app_ports"],
            pem=_certificate(folder),
        )
        check = subprocess.run(
            [_tool("haproxy"), "-c", "-f", str(config)], capture_output=True, text=True, check=False
        )
        if check.returncode != 0:
            raise ClusterError(f"HAProxy refused its configuration: {check.stdout}{check.stderr}")
        state["haproxy_pid"] = _spawn(
            [_tool("haproxy"), "-db", "-f", str(config)], folder / "haproxy.log"
        )
        state["url"] = f"https://127.0.0.1:{state['https_port']}"
        _save(folder, state)
        _wait_for(f"{state['url']}/readyz", "HAProxy", folder / "haproxy.log")
    except BaseException:
        down_state(state)
        raise
    return state


def _save(folder: Path, state: dict[str, Any]) -> None:
    (folder / "state.json").write_text(json.dumps(state, indent=2))


def load_state(folder: Path) -> dict[str, Any]:
    try:
        state: dict[str, Any] = json.loads((folder / "state.json").read_text())
    except FileNotFoundError:
        raise ClusterError(f"No cluster is up in {folder}.") from None
    return state


def stop_pid(pid: int, timeout: float = 20) -> None:
    """SIGTERM to the process's session, then SIGKILL if it lingers."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
                finished, _ = os.waitpid(pid, os.WNOHANG)
                if finished:
                    return
            except ChildProcessError:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    return
            except ProcessLookupError:
                return
            time.sleep(0.1)


def down_state(state: dict[str, Any]) -> None:
    folder = Path(state["dir"])
    for key in ("haproxy_pid",):
        if state.get(key):
            stop_pid(state[key])
    for pid in state.get("app_pids") or []:
        if pid:
            stop_pid(pid)
    for key in ("fake_claude_pid", "chroma_pid"):
        if state.get(key):
            stop_pid(state[key])
    if state.get("postgres_port"):
        stop_postgres(folder)
    (folder / "state.json").unlink(missing_ok=True)


def status(state: dict[str, Any]) -> list[str]:
    lines = [f"Parley cluster in {state['dir']}: {state.get('url', '(no proxy)')}"]
    for index, port in enumerate(state.get("app_ports", [])):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as answer:
                ready = "ready" if answer.status == 200 else f"HTTP {answer.status}"
        except OSError as exc:
            ready = f"not ready ({getattr(exc, 'code', None) or 'no answer'})"
        lines.append(f"  app {index}: 127.0.0.1:{port}, pid {state['app_pids'][index]}, {ready}")
    return lines


def stop_part(state: dict[str, Any], part: str) -> None:
    """Stop one part of a running cluster (a drill: the others go on)."""
    if part == "postgres":
        stop_postgres(Path(state["dir"]))
    elif part == "chroma":
        stop_pid(state["chroma_pid"])
    else:
        stop_pid(state["app_pids"][_app_index(state, part)])


def start_part(state: dict[str, Any], part: str) -> None:
    """Start a stopped part again, where it was (same port, same files)."""
    folder = Path(state["dir"])
    if part == "postgres":
        start_postgres(folder, state["postgres_port"])
    elif part == "chroma":
        start_chroma(state)
        _wait_for(f"{state['chroma_url']}/api/v2/heartbeat", "Chroma", folder / "chroma.log")
    else:
        index = _app_index(state, part)
        start_app(state, index)
        wait_for_app(state, index)
    _save(folder, state)


def _app_index(state: dict[str, Any], part: str) -> int:
    count = len(state.get("app_ports", []))
    names = [f"app-{i}" for i in range(count)]
    if part not in names:
        raise ClusterError(f"No part {part!r}: name postgres, chroma or one of {names}.")
    return names.index(part)


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="deploy/cluster.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", default=str(ROOT / ".cluster"), help="where the cluster lives")
    sub = parser.add_subparsers(dest="command", required=True)
    start = sub.add_parser("up", help="start PostgreSQL, Chroma, the app processes and HAProxy")
    start.add_argument("--processes", type=int, default=2)
    start.add_argument(
        "--port", type=int, default=8443, help="HTTPS port (HTTP on the next); 0: any"
    )
    start.add_argument(
        "--fake-claude", action="store_true", help="answer with the fake Messages API"
    )
    start.add_argument("--words", type=int, default=150)
    start.add_argument("--word-delay-ms", type=float, default=30.0)
    start.add_argument(
        "--env",
        nargs=2,
        action="append",
        metavar=("NAME", "VALUE"),
        help="more settings for the app",
    )
    sub.add_parser("down", help="stop everything the cluster started")
    sub.add_parser("status", help="what runs, and whether each process is ready")
    for verb in ("stop", "start"):
        drill = sub.add_parser(verb, help=f"{verb} one part (postgres, chroma, app-N): a drill")
        drill.add_argument("part")
    args = parser.parse_args(argv)
    folder = Path(args.dir).resolve()
    try:
        if args.command == "up":
            state = up(args)
            say(f"Parley is up at {state['url']} ({args.processes} processes, self-signed).")
            say(f"Metrics: {state['url']}/metrics · stop it with: {sys.argv[0]} down")
        elif args.command == "down":
            down_state(load_state(folder))
            say("The cluster is down.")
        elif args.command in ("stop", "start"):
            state = load_state(folder)
            (stop_part if args.command == "stop" else start_part)(state, args.part)
            say(f"{args.part}: {'stopped' if args.command == 'stop' else 'started'}.")
        else:
            say("\n".join(status(load_state(folder))))
    except ClusterError as exc:
        sys.stderr.write(f"cluster: {exc}\n")
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
