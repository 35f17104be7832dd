"""The LoCoMo-format benchmark: id normalisation, scoring and the CLI's JSON line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from parley.bench.locomo import evidence_ids, load, normalise, run


def write_sample(path: Path) -> Path:
    turns_1 = [
        {"speaker": "Ann", "dia_id": "D1:1", "text": "I adopted a dog named Biscuit!"},
        {"speaker": "Bob", "dia_id": "D1:2", "text": "Lovely. I started pottery classes."},
        {"speaker": "Ann", "dia_id": "D1:3", "text": "Look at this.", "blip_caption": "a beach"},
    ]
    turns_2 = [
        {"speaker": "Bob", "dia_id": "D2:1", "text": "My pottery bowl cracked in the kiln."},
        {"speaker": "Ann", "dia_id": "D2:2", "text": "Oh no. Biscuit ate my sandwich today."},
    ] + [
        {"speaker": "Ann" if i % 2 else "Bob", "dia_id": f"D2:{i}", "text": f"Small talk {i}."}
        for i in range(3, 40)
    ]
    sample = {
        "sample_id": "tiny",
        "conversation": {
            "speaker_a": "Ann",
            "speaker_b": "Bob",
            "session_1_date_time": "1:56 pm on 8 May, 2023",
            "session_1": turns_1,
            "session_2_date_time": "10:00 am on 9 May, 2023",
            "session_2": turns_2,
            "session_3_date_time": "9:00 am on 1 June, 2023",  # a date with no turns
        },
        "qa": [
            {
                "question": "What is Ann's dog called?",
                "answer": "Biscuit",
                "evidence": ["D1:1"],
                "category": 4,
            },
            {
                "question": "What did Bob make?",
                "answer": "a bowl",
                "evidence": ["D1:2; D2:01"],
                "category": 1,
            },
            {
                "question": "Adversarial",
                "adversarial_answer": "x",
                "evidence": ["D1:1"],
                "category": 5,
            },
            {"question": "No evidence", "answer": "x", "evidence": ["D"], "category": 2},
        ],
    }
    path.write_text(json.dumps([sample]))
    return path


def test_evidence_ids_are_normalised() -> None:
    assert evidence_ids(["D8:6; D9:17", "D:11:26", "D30:05", "D", "D1:3"]) == [
        "D8:6",
        "D9:17",
        "D11:26",
        "D30:5",
        "D1:3",
    ]
    assert normalise("  Biscuit's BOWL, (cracked)! ") == "biscuit s bowl cracked"


def test_loading_keeps_speakers_sessions_roles_and_captions(tmp_path: Path) -> None:
    (conversation,) = load(write_sample(tmp_path / "tiny.json"))
    first, second, third = conversation.turns[:3]
    assert (first.role, first.speaker, second.role) == ("user", "Ann", "assistant")
    assert first.session == "Session 1, 1:56 pm on 8 May, 2023"
    assert first.created_at is not None and first.created_at.day == 8
    assert third.content.endswith("[shares a photo: a beach]")
    assert conversation.dia_to_turn["D2:1"] == 4


def test_scores_follow_the_definitions(tmp_path: Path) -> None:
    data = write_sample(tmp_path / "tiny.json")
    full, small = run(data, "full", [5000, 60])
    assert full.as_dict()["questions"] == 2  # category 5 and the item without evidence skipped
    assert full.as_dict()["evidence_recall"] == 1.0
    assert full.as_dict()["answer_recall"] == 0.5  # "Biscuit" appears; "a bowl" does not
    assert small.over_budget == 2 and small.as_dict()["evidence_recall"] == 0.0
    (window,) = run(data, "token_window", [150])
    result = window.as_dict()
    assert result["evidence_recall"] == 0.0  # the evidence is older than the window
    assert 0 < result["tokens_mean"] <= 150
    assert set(result["per_category"]) == {"1", "4"}


@pytest.mark.slow
def test_cli_prints_a_table_and_ends_with_one_json_object(tmp_path: Path) -> None:
    data = write_sample(tmp_path / "tiny.json")
    parley = str(Path(sys.executable).with_name("parley"))
    done = subprocess.run(
        [
            parley,
            "bench",
            "memory",
            "--data",
            str(data),
            "--strategy",
            "hybrid",
            "--budget",
            "400",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "| hybrid | 400 |" in done.stdout
    last = json.loads(done.stdout.strip().splitlines()[-1])
    assert {
        "evidence_recall",
        "answer_recall",
        "tokens_mean",
        "latency_ms_p50",
        "latency_ms_p95",
        "per_category",
    } <= set(last)
    assert last["evidence_recall"] == 1.0  # hybrid recalls both old evidence turns
    assert last["tokens_mean"] <= 400
