"""Documents: upload (with a progress bar per file), see what you may read, share,
unshare and delete what is yours (admins: everything), and try a search."""

from __future__ import annotations

import streamlit as st
from streamlit.delta_generator import DeltaGenerator

from parley.app_pages import state
from parley.app_pages.rendering import plain_label, safe_markdown
from parley.app_pages.words import say
from parley.chat.documents.library import MAX_UPLOAD_MB, SUPPORTED_SUFFIXES, DocumentInfo
from parley.core.counts import count
from parley.core.domain import Principal
from parley.core.errors import ParleyError
from parley.wiring.services import Services

services = state.services()
ui = state.ui_state()
principal = state.current_principal(services)
if principal is None:
    st.rerun()
assert principal is not None


def upload(svc: Services, who: Principal) -> None:
    groups_open = svc.groups.names_for(who)
    with st.form("upload", clear_on_submit=True):
        files = st.file_uploader(
            "Files",
            type=[suffix.lstrip(".") for suffix in SUPPORTED_SUFFIXES],
            accept_multiple_files=True,
            max_upload_size=MAX_UPLOAD_MB,  # the uploader says Parley's own limit
            help=f"Text, Markdown, HTML, PDF or Word (.docx), up to {MAX_UPLOAD_MB} MB each.",
        )
        share_with = st.multiselect("Share with groups", groups_open, key="upload-groups")
        public = st.checkbox("Everyone may read them (public)", key="upload-public")
        submitted = st.form_submit_button("Add", icon=":material/upload:", type="primary")
    if not submitted:
        return
    if not files:
        st.warning("Choose at least one file to add.")
        return
    for file in files:
        bar = st.progress(0.0, text=plain_label(f"Reading {file.name}"))

        def report(fraction: float, step: str, bar: DeltaGenerator = bar) -> None:
            bar.progress(min(1.0, max(0.0, fraction)), text=plain_label(step))

        try:
            info = svc.documents.add(
                who,
                file.name,
                file.getvalue(),
                groups=tuple(share_with),
                public=public,
                progress=report,
            )
        except ParleyError as exc:  # one file's problem; the others still go in
            bar.empty()
            st.error(safe_markdown(say(exc)))  # the sentence names the file
        else:
            bar.progress(
                1.0, text=plain_label(f"{info.name}: {count(info.chunks, 'passage')} indexed")
            )


def visibility(info: DocumentInfo) -> str:
    if info.public:
        return "everyone"
    if info.groups:
        return "groups: " + ", ".join(info.groups)
    return "only the owner"


def manage(svc: Services, who: Principal, documents: list[DocumentInfo]) -> None:
    mine = [d for d in documents if d.may_manage]  # the service says who may
    if not mine:
        return
    st.subheader("Share or delete")
    labels = {f"{d.id}: {d.name}": d for d in mine}
    picked = labels[st.selectbox("Document", list(labels), key="manage-document")]
    groups_open = svc.groups.names_for(who)
    left, right = st.columns(2)
    with left:
        group = st.selectbox("Group", groups_open, key="share-group") if groups_open else None
        if group is not None:
            shared = group in picked.groups
            if st.button(
                plain_label(f"Stop sharing with {group}" if shared else f"Share with {group}"),
                key="share-toggle",
            ):
                act(svc, who, picked, group=group, grant=not shared)
        if st.button("Make private" if picked.public else "Make public", key="public-toggle"):
            act(svc, who, picked, public=True, grant=not picked.public)
    with right:
        if ui.confirm_delete != -picked.id:  # documents use negative ids in the confirm slot
            if st.button("Delete", icon=":material/delete:", key="document-delete"):
                ui.confirm_delete = -picked.id
                st.rerun()
        else:
            st.warning(f"Delete {plain_label(picked.name)} and all its passages?")
            if st.button("Yes, delete", type="primary", key="document-delete-confirm"):
                try:
                    svc.documents.delete(who, picked.id)
                except ParleyError as exc:
                    st.error(say(exc))
                ui.confirm_delete = None
                st.rerun()
            if st.button("Keep it", key="document-delete-cancel"):
                ui.confirm_delete = None
                st.rerun()


def act(
    svc: Services,
    who: Principal,
    document: DocumentInfo,
    *,
    grant: bool,
    group: str | None = None,
    public: bool = False,
) -> None:
    change = svc.documents.share if grant else svc.documents.unshare
    try:
        change(who, document.id, group=group, public=public)
    except ParleyError as exc:
        st.error(say(exc))
    else:
        st.rerun()


def search(svc: Services, who: Principal) -> None:
    st.subheader("Search")
    query = st.text_input("Find passages in the documents you may read", key="doc-search")
    if not query:
        return
    try:
        hits = svc.documents.search(who, query, k=5)
    except ParleyError as exc:
        st.error(say(exc))
        return
    if not hits:
        st.caption("Nothing you may read matches.")
    for hit in hits:
        where = f", page {hit.page}" if hit.page else ""
        with st.expander(plain_label(f"{hit.name}{where} · {hit.score:.2f}")):
            st.caption(plain_label(f"Owner {hit.owner} · you see it as {hit.why}"))
            st.text(hit.text)


st.title("Documents")
st.caption(
    "Answers draw on the documents you may read and cite them. Yours are private "
    "until you share them with a group or make them public."
)
upload(services, principal)
documents = services.documents.list_for(principal)
if documents:
    st.dataframe(
        [
            {
                "id": d.id,
                "name": d.name,
                "owner": d.owner,
                "who may read it": visibility(d),
                "passages": d.chunks,
                "summary": d.summary or "",  # plain text in a cell: never rendered as Markdown
            }
            for d in documents
        ],
        hide_index=True,
        width="stretch",
    )
else:
    st.caption("No documents yet.")
manage(services, principal, documents)
search(services, principal)
