"""The `parley` console script, run as a real subprocess against a temporary data dir."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from parley.fakes.anthropic_server import FakeAnthropic, Fault, Reply

PARLEY = str(Path(sys.executable).with_name("parley"))


def run(
    *args: str, stdin: str = "", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PARLEY, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        check=False,
    )


def claude(fake: FakeAnthropic) -> dict[str, str]:
    """Environment that points the `parley` command at the fake API."""
    return {
        "ANTHROPIC_API_KEY": "sk-ant-test",
        "ANTHROPIC_BASE_URL": fake.base_url,
        "PARLEY_ANTHROPIC_MAX_RETRIES": "0",
        "PARLEY_MODEL_TITLES": "false",
    }


def test_db_upgrade_says_whether_it_created_upgraded_or_found_the_database_current() -> None:
    from alembic import command

    from parley.core.config import get_settings
    from parley.store.migrate import alembic_config, head_revision
    from parley.wiring.factories import open_database

    head = head_revision()
    created = run("db", "upgrade")
    assert created.returncode == 0 and f"Database created at revision {head}" in created.stdout
    again = run("db", "upgrade")
    assert f"Database is up to date at revision {head}" in again.stdout
    database = open_database(get_settings())
    try:  # one migration back, as a database of the version before
        command.downgrade(alembic_config(database.url.render_as_string(hide_password=False)), "-1")
    finally:
        database.dispose()
    upgraded = run("db", "upgrade")
    assert "Database upgraded from revision" in upgraded.stdout and f"to {head}" in upgraded.stdout


def test_user_add_reads_the_password_from_stdin_and_list_shows_it(tmp_path: Path) -> None:
    assert run("db", "upgrade").returncode == 0
    assert (tmp_path / "data" / "parley.db").is_file()  # everything under PARLEY_DATA_DIR
    created = run("user", "add", "alice", "--admin", stdin="alice-password\n")
    assert created.returncode == 0, created.stderr
    assert "Created admin 'alice'" in created.stdout
    listing = run("user", "list")
    assert "alice" in listing.stdout and "admin" in listing.stdout
    duplicate = run("user", "add", "alice", stdin="other-password\n")
    assert duplicate.returncode == 1
    assert "already exists" in duplicate.stderr and "Traceback" not in duplicate.stderr


def test_user_disable_enable_and_passwd(tmp_path: Path) -> None:
    from parley.core.config import get_settings
    from parley.wiring.services import build_services

    assert run("db", "upgrade").returncode == 0
    assert run("user", "add", "bob", stdin="bob-password\n").returncode == 0
    accounts = build_services(get_settings()).accounts
    bob = accounts.authenticate(name="bob", password="bob-password")

    disabled = run("user", "disable", "bob")
    assert disabled.returncode == 0, disabled.stderr
    assert "Disabled 'bob'" in disabled.stdout
    assert "disabled" in run("user", "list").stdout
    assert accounts.refresh(bob) is None
    enabled = run("user", "enable", "bob")
    assert enabled.returncode == 0 and "Enabled 'bob'" in enabled.stdout

    changed = run("user", "passwd", "bob", stdin="new-bob-password\n")
    assert changed.returncode == 0, changed.stderr
    assert accounts.authenticate(name="bob", password="new-bob-password", client="a") == bob
    too_short = run("user", "passwd", "bob", stdin="short\n")
    assert too_short.returncode == 1 and "at least 8 characters" in too_short.stderr
    ghost = run("user", "disable", "ghost")
    assert ghost.returncode == 1 and "no user named 'ghost'" in ghost.stderr
    assert "Traceback" not in ghost.stderr + too_short.stderr
    assert (tmp_path / "data").is_dir()


def test_commands_before_migration_say_what_to_do() -> None:
    result = run("user", "list")
    assert result.returncode == 1
    assert "parley db upgrade" in result.stderr and "Traceback" not in result.stderr


def test_chat_streams_to_stdout_and_prints_the_conversation_id_last(
    fake_anthropic: FakeAnthropic,
) -> None:
    env = claude(fake_anthropic)
    run("db", "upgrade")
    run("user", "add", "alice", stdin="alice-password\n")
    fake_anthropic.enqueue(Reply(text="Four."), Reply(text="Eight."))
    first = run("chat", "--user", "alice", "What is 2+2?", env=env)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == "Four."
    conversation_id = first.stderr.strip().splitlines()[-1]
    assert conversation_id.isdigit()
    # Nothing else on the terminal: log lines went to the log file.
    assert first.stderr.strip().splitlines() == [conversation_id], first.stderr
    second = run(
        "chat",
        "--user",
        "alice",
        "--conversation",
        conversation_id,
        "-",
        stdin="Double it",
        env=env,
    )
    assert second.stdout.strip() == "Eight."
    assert second.stderr.strip().splitlines() == [conversation_id], second.stderr
    sent = [m["content"] for m in fake_anthropic.requests[-1].body["messages"]]
    assert sent == ["What is 2+2?", "Four.", "Double it"]


def test_chat_failure_ends_with_a_sentence_and_keeps_the_partial_answer(
    fake_anthropic: FakeAnthropic,
) -> None:
    env = claude(fake_anthropic)
    run("db", "upgrade")
    run("user", "add", "alice", stdin="alice-password\n")
    # The first break is continued once automatically; the second one ends the answer.
    fake_anthropic.enqueue(
        Fault("drop_mid_stream", text="The answer is", after_chunks=2),
        Fault("drop_mid_stream", text=" forty", after_chunks=1),
    )
    result = run("chat", "--user", "alice", "Question?", env=env)
    assert result.returncode == 1
    # "The answer " arrived (two chunks), then " forty" after the prefill "The answer".
    assert result.stdout.strip() == "The answer forty"
    lines = result.stderr.strip().splitlines()
    assert "broke off" in lines[-2] and lines[-1].isdigit()
    assert "Traceback" not in result.stderr


def test_unknown_user_is_a_clear_error() -> None:
    run("db", "upgrade")
    result = run("chat", "--user", "ghost", "hello")
    assert result.returncode == 1
    assert "No user named 'ghost'" in result.stderr


def test_user_add_on_a_terminal_asks_twice_and_refuses_a_mismatch() -> None:
    import pty
    import selectors

    assert run("db", "upgrade").returncode == 0

    def on_terminal(*answers: str) -> tuple[int, str]:
        pid, fd = pty.fork()
        if pid == 0:  # the child: a real controlling terminal, as a person would have
            try:
                os.execv(PARLEY, [PARLEY, "user", "add", "tty-user"])
            finally:
                os._exit(127)  # never fall back into the test runner
        seen = b""
        pending = list(answers)
        waiting = selectors.DefaultSelector()  # not select(): any descriptor number works
        waiting.register(fd, selectors.EVENT_READ)
        while True:
            if not waiting.select(timeout=30):
                break
            try:
                chunk = os.read(fd, 1024)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            seen += chunk
            if pending and seen.rstrip().endswith(b":"):
                # getpass turns echo off with TCSAFLUSH after printing the prompt, which
                # discards input typed too early: answer as a person would, a moment later.
                time.sleep(0.5)
                os.write(fd, pending.pop(0).encode() + b"\n")
        deadline = time.monotonic() + 15
        while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        if done[0] == 0:  # stuck at a prompt: never hang the suite
            os.kill(pid, 9)
            done = os.waitpid(pid, 0)
        status = done[1]
        waiting.close()
        os.close(fd)
        return os.waitstatus_to_exitcode(status), seen.decode(errors="replace")

    code, screen = on_terminal("first-password", "other-password")
    assert code == 1 and "Password again" in screen and "differ" in screen
    assert "first-password" not in screen  # not echoed
    code, screen = on_terminal("good-password", "good-password")
    assert code == 0 and "Created user 'tty-user'" in screen


def test_conversation_list_and_rm(fake_anthropic: FakeAnthropic, tmp_path: Path) -> None:
    import json

    env = claude(fake_anthropic)
    assert run("db", "upgrade").returncode == 0
    assert run("user", "add", "ann", stdin="ann-password\n").returncode == 0
    assert run("user", "add", "ben", stdin="ben-password\n").returncode == 0
    for question in ("first question", "second question"):
        fake_anthropic.enqueue(Reply(text="an answer"))
        assert run("chat", "--user", "ann", question, env=env).returncode == 0
    listed = run("conversation", "list", "--user", "ann", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout.strip().splitlines()[-1])
    assert [r["title"] for r in rows] == ["second question", "first question"]
    newest = rows[0]["id"]
    other = run("conversation", "rm", str(newest), "--user", "ben")  # not ben's: not found
    assert other.returncode == 1 and "Traceback" not in other.stderr
    erased = run("conversation", "rm", str(newest), "--user", "ann")
    assert erased.returncode == 0, erased.stderr
    assert f"Erased conversation {newest}" in erased.stdout
    after = json.loads(
        run("conversation", "list", "--user", "ann", "--json").stdout.splitlines()[-1]
    )
    assert [r["id"] for r in after] == [rows[1]["id"]]
    assert json.loads(run("conversation", "list", "--user", "ben", "--json").stdout) == []

    # Search: the user's own conversations only; a query with no word gets a sentence.
    found = run("conversation", "search", "--user", "ann", "question", "--json")
    assert found.returncode == 0, found.stderr
    (hit,) = json.loads(found.stdout.strip().splitlines()[-1])  # the erased one is gone
    assert (hit["conversation_id"], hit["role"]) == (rows[1]["id"], "user")
    assert hit["snippet"] == "first question" and isinstance(hit["message_id"], int)
    assert hit["title"] == "first question"
    assert (
        json.loads(run("conversation", "search", "--user", "ben", "question", "--json").stdout)
        == []
    )
    shown = run("conversation", "search", "--user", "ann", "quest")
    assert shown.returncode == 0 and "first question" in shown.stdout
    # Feedback given on the page is exported by the operator, with the answer's provenance.
    from parley.cli.common import principal_named
    from parley.core.config import get_settings
    from parley.core.domain import Rating
    from parley.wiring.services import build_services

    services = build_services(get_settings(), eager=False)
    try:
        ann = principal_named(services, "ann")
        answer = hit["message_id"] + 1
        services.feedback.give(ann, answer, Rating.DOWN, "Too vague, ‘really’")
    finally:
        services.close()
    exported = run("feedback", "export")
    assert exported.returncode == 0, exported.stderr
    (line,) = [json.loads(x) for x in exported.stdout.splitlines()]
    assert (line["user"], line["message_id"], line["rating"]) == ("ann", answer, "down")
    assert line["comment"] == "Too vague, ‘really’" and line["prompt"]["total_tokens"] > 0
    assert run("feedback", "export", "--rating", "up").stdout == ""
    as_csv = run("feedback", "export", "--format", "csv").stdout.splitlines()
    assert as_csv[0].startswith("id,user,conversation_id") and len(as_csv) == 2
    # Export and import: only the owner exports; Parley's JSON comes back as ben's own.
    kept = str(rows[1]["id"])
    as_md = run("conversation", "export", kept, "--user", "ann")
    assert as_md.returncode == 0 and as_md.stdout.startswith("# first question")
    refused = run("conversation", "export", kept, "--user", "ben", "--format", "json")
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    as_json = run("conversation", "export", kept, "--user", "ann", "--format", "json")
    exported = tmp_path / "exported.json"
    exported.write_text(as_json.stdout, encoding="utf-8")
    brought = run("conversation", "import", str(exported), "--user", "ben")
    assert brought.returncode == 0, brought.stderr
    assert "Imported as conversation" in brought.stdout
    bens = json.loads(run("conversation", "list", "--user", "ben", "--json").stdout)
    assert [c["title"] for c in bens] == ["first question"]
    foreign = tmp_path / "foreign.json"
    foreign.write_text('{"hello": "world"}', encoding="utf-8")
    bad = run("conversation", "import", str(foreign), "--user", "ben")
    assert bad.returncode == 1 and "not a conversation exported from Parley" in bad.stderr
    missing = run("conversation", "import", str(tmp_path / "nope.json"), "--user", "ben")
    assert missing.returncode == 1 and "Cannot read" in missing.stderr
    assert "Traceback" not in bad.stderr + missing.stderr
    empty = run("conversation", "search", "--user", "ann", "?!")
    assert empty.returncode == 1 and "Type a word to search for." in empty.stderr
    assert "Traceback" not in empty.stderr


def test_docs_and_groups_from_the_command_line(tmp_path: Path) -> None:
    import json

    assert run("db", "upgrade").returncode == 0
    for name in ("ann", "ben"):
        assert run("user", "add", name, stdin=f"{name}-password\n").returncode == 0
    notes = tmp_path / "notes.md"
    notes.write_text("# Budget\nThe marketing budget for May is 40,000 euros.\n")
    empty = tmp_path / "empty.txt"
    empty.write_text("  ")
    added = run("docs", "add", str(notes), str(empty), "--user", "ann")
    assert added.returncode == 1  # one of the two failed, with a sentence
    assert "Added document 1: notes.md" in added.stdout
    assert "parley: empty.txt: the file is empty." in added.stderr
    assert "Traceback" not in added.stderr

    def search(user: str) -> list[dict[str, object]]:
        result = run("docs", "search", "marketing budget May", "--user", user, "--json")
        assert result.returncode == 0, result.stderr
        found: list[dict[str, object]] = json.loads(result.stdout.splitlines()[-1])
        return found

    assert [h["name"] for h in search("ann")] == ["notes.md"]
    assert search("ben") == []
    assert run("group", "add", "finance").returncode == 0
    assert run("group", "assign", "finance", "ben").returncode == 0
    assert run("group", "assign", "finance", "ann").returncode == 0  # one shares with one's groups
    shared = run("docs", "share", "1", "--user", "ann", "--group", "finance")
    assert shared.returncode == 0 and "groups: finance" in shared.stdout
    assert [h["owner"] for h in search("ben")] == ["ann"]
    listed = json.loads(run("docs", "list", "--user", "ben", "--json").stdout.splitlines()[-1])
    assert listed == [
        {
            "id": 1,
            "name": "notes.md",
            "owner": "ann",
            "groups": ["finance"],
            "visibility": "groups",
            "summary": None,  # until a batch job writes one
        }
    ]
    assert run("group", "remove", "finance", "ben").returncode == 0
    assert search("ben") == []  # revoked: gone at once
    stranger = run("docs", "rm", "1", "--user", "ben")
    assert stranger.returncode == 1 and "no document 1" in stranger.stderr
    assert run("docs", "rm", "1", "--user", "ann").returncode == 0
    assert search("ann") == []


# Start-up work runs on the background pool; the process must not end under it (it once
# did: the pool's task then met "cannot schedule new futures after interpreter shutdown"
# and said "Moving document vectors into scoped collections failed; will retry").
NOISE = ("will retry", "failed", "interpreter shutdown", "Traceback", "Exception")


def assert_quiet(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert not any(word in result.stdout for word in NOISE), result.stdout


def logged(tmp_path: Path) -> str:
    log = tmp_path / "data" / "logs" / "parley.log"
    return log.read_text() if log.is_file() else ""


def test_short_commands_on_a_fresh_data_dir_end_cleanly_and_say_nothing_else(
    tmp_path: Path,
) -> None:
    assert_quiet(run("db", "upgrade"))
    for command in (
        ("user", "list"),
        ("audit", "verify"),
        ("memory", "strategies"),
        ("usage",),
        ("user", "add", "ann"),
        ("quota", "show", "ann"),
    ):
        assert_quiet(run(*command, stdin="ann-password\n"))
    assert not any(word in logged(tmp_path) for word in NOISE), logged(tmp_path)


def test_start_up_work_that_is_due_is_done_before_the_command_exits(tmp_path: Path) -> None:
    from parley.core.config import get_settings
    from parley.store.db import Database
    from parley.store.models import DocumentSync

    assert_quiet(run("db", "upgrade"))
    # A document deleted while the vector store was down: its vectors are still to go.
    database = Database(get_settings().resolved_database_url)
    try:
        with database.session() as session:
            session.add(DocumentSync(document_id=41, scopes=["documents-u1"]))
        assert_quiet(run("user", "list"))
        with database.session() as session:
            assert session.get(DocumentSync, 41) is None  # the sweep ran to its end
    finally:
        database.dispose()
    assert not any(word in logged(tmp_path) for word in NOISE), logged(tmp_path)


def test_batch_jobs_from_the_command_line_through_the_batch_api(
    fake_anthropic: FakeAnthropic, tmp_path: Path
) -> None:
    env = claude(fake_anthropic)
    run("db", "upgrade")
    run("user", "add", "alice", stdin="alice-password\n")
    note = tmp_path / "harbour.txt"
    note.write_text("The harbour opens at nine and closes at six.")
    assert run("docs", "add", "--user", "alice", str(note), env=env).returncode == 0
    assert run("batch", "status", env=env).stdout.strip() == "No batch jobs yet."
    fake_anthropic.enqueue(Reply(text="Opening hours of the harbour."))
    submitted = run("batch", "submit", "documents", "--wait", "--every", "1", env=env)
    assert submitted.returncode == 0, submitted.stderr
    lines = submitted.stdout.strip().splitlines()
    assert lines[0] == "Submitted job 1: 1 item(s)."
    assert "running" in lines[1] and "done, 1 of 1 done" in lines[-1]
    listed = run("docs", "list", "--user", "alice", env=env).stdout
    assert "Opening hours of the harbour." in listed
    status = json.loads(run("batch", "status", "1", "--json", env=env).stdout)
    assert (status["state"], status["done"], status["items"]) == ("done", 1, 1)
    again = run("batch", "submit", "documents", env=env)
    assert again.stdout.strip() == "Nothing needs documents now: no job was made."
    refused = run("batch", "cancel", "1", env=env)
    assert refused.returncode == 1
    assert refused.stderr.strip() == "parley: Batch job 1 has already ended (done)."
    unknown = run("batch", "status", "7", env=env)
    assert unknown.stderr.strip() == "parley: There is no batch job 7."


def test_without_a_key_a_batch_job_runs_on_the_local_model(tmp_path: Path) -> None:
    run("db", "upgrade")
    run("user", "add", "alice", stdin="alice-password\n")
    note = tmp_path / "picnic.txt"
    note.write_text("The picnic is on Saturday at the lake. Bring bread and apples.")
    assert run("docs", "add", "--user", "alice", str(note)).returncode == 0
    done = run("batch", "submit", "documents")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[0] == "Submitted job 1: 1 item(s)."
    assert "local model" in lines[-1] and "done, 1 of 1 done" in lines[-1]
    listed = json.loads(run("docs", "list", "--user", "alice", "--json").stdout)
    assert listed[0]["summary"]  # whatever the small model wrote, it is kept
