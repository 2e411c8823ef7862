"""`fastig dataset` and `fastig aggregate`: whole data sets, resumable, nothing lost, tokens ranked per class."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fastig.app.aggregate import class_rankings, per_document, words

from conftest import hanging_after_shards, make_text, record
from test_cli import exit_code

TEXTS = [make_text(5 + 3 * i, seed=i) for i in range(12)]
TEXTS[4] = "   "                                    # skipped, recorded in skipped.csv
LABELS = [i % 3 for i in range(12)]


@pytest.fixture(scope="module")
def model_dir(saved_model):
    return str(saved_model("bert"))


@pytest.fixture(scope="module")
def data_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    with open(folder / "docs.csv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("text", "labels"), *zip(TEXTS, LABELS)])
    (folder / "docs.jsonl").write_text("".join(json.dumps({"text": t, "labels": y}) + "\n"
                                               for t, y in zip(TEXTS, LABELS)), encoding="utf-8")
    return folder


def _args(model_dir, data, out, *extra):
    return ["dataset", "--model", model_dir, "--data", str(data), "--out", str(out), "--n-steps", "8",
            "--shard-size", "3", "--top-k", "4", *extra]


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "documents.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def csv_run(model_dir, data_files, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "csv"
    assert exit_code(_args(model_dir, data_files / "docs.csv", out, "--target", "label")) == 0
    return out


def test_every_document_is_written_once_with_what_was_asked(csv_run):
    records = _records(csv_run)
    assert [r["id"] for r in records] == [i for i in range(12) if i != 4]
    skipped = list(csv.reader(open(csv_run / "skipped.csv")))
    assert skipped == [["id", "reason"], ["4", "empty text"]]
    index = json.loads((csv_run / "index.json").read_text())
    assert sorted(i for ids in index.values() for i in ids) == [r["id"] for r in records]
    assert all(len(ids) <= 3 for ids in index.values())
    for r in records:
        assert r["label"] == LABELS[r["id"]] and r["target"] == r["label"]
        assert len(r["tokens"]) == len(r["token_scores"]) and r["special_positions"] == [0, len(r["tokens"]) - 1]
        assert 0 < r["probability"] <= 1 and abs(r["delta"]) < 0.05
        assert [t["score"] for t in r["top"]] == sorted(r["token_scores"], reverse=True)[:4]
        assert [t["score"] for t in r["bottom"]] == sorted(r["token_scores"])[:4]
        assert all(r["tokens"][t["position"]] == t["token"] for t in r["top"] + r["bottom"])
    summary = list(csv.DictReader(open(csv_run / "documents.csv")))
    assert [int(s["id"]) for s in summary] == [r["id"] for r in records]
    assert all(float(s["delta"]) == r["delta"] and int(s["tokens"]) == len(r["tokens"])
               for s, r in zip(summary, records))
    settings = json.loads((csv_run / "manifest.json").read_text())["settings"]
    assert settings["n_steps"] == 8 and settings["target"] == "label" and settings["precision"] == "fp32"


def test_jsonl_gives_the_records_csv_gives(model_dir, data_files, csv_run, tmp_path):
    assert exit_code(_args(model_dir, data_files / "docs.jsonl", tmp_path / "jsonl", "--target", "label")) == 0
    assert (tmp_path / "jsonl" / "documents.jsonl").read_text() == (csv_run / "documents.jsonl").read_text()


@pytest.mark.slow
def test_a_run_killed_and_resumed_equals_an_uninterrupted_one(model_dir, data_files, tmp_path):
    """One document per shard in both, so no model call is shared differently; what is left is the
    last bits of fp32, which differ from process to process (the math libraries pick kernels by alignment)."""
    args = _args(model_dir, data_files / "docs.csv", tmp_path / "uninterrupted", "--target", "label")
    args[args.index("--shard-size") + 1] = "1"
    assert exit_code(args) == 0
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "fastig", *args]
    command[command.index("--out") + 1] = str(out)
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env=hanging_after_shards(2, tmp_path / "hang"))
    try:
        deadline = time.monotonic() + 300
        while len(list((out / "shards").glob("[0-9]*.jsonl"))) < 2 and process.poll() is None:
            assert time.monotonic() < deadline, "no 2 shards written in 5 minutes"
            time.sleep(0.1)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    written = len(list((out / "shards").glob("[0-9]*.jsonl")))
    assert process.returncode == -signal.SIGKILL and written == 2, "the run was not stopped midway"
    assert not (out / "documents.jsonl").exists()
    assert subprocess.run(command, capture_output=True).returncode == 0
    resumed, uninterrupted = _records(out), _records(tmp_path / "uninterrupted")
    assert [r["id"] for r in resumed] == [r["id"] for r in uninterrupted]
    for a, b in zip(resumed, uninterrupted):
        numbers = ("token_scores", "delta", "probability", "output_at_input", "output_at_baseline", "top", "bottom",
                   "integrand")
        assert {k: v for k, v in a.items() if k not in numbers} == {k: v for k, v in b.items() if k not in numbers}
        assert a["token_scores"] == pytest.approx(b["token_scores"], abs=1e-6)     # unit-norm per document
        assert a["integrand"] == pytest.approx(b["integrand"], rel=1e-5, abs=1e-7)
        for key in ("delta", "probability", "output_at_input", "output_at_baseline"):
            assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-6), key
    assert sorted(json.loads((out / "index.json").read_text())) == [f"0-{i:05d}.jsonl" for i in range(11)]


def test_resuming_with_other_settings_is_refused_by_name(model_dir, data_files, csv_run, capsys):
    before = (csv_run / "documents.jsonl").read_bytes()
    args = _args(model_dir, data_files / "docs.csv", csv_run, "--target", "label")
    args[args.index("--n-steps") + 1] = "16"
    assert exit_code(args) == 2
    err = capsys.readouterr().err.strip()
    assert "n_steps 8 (then) vs 16 (now)" in err and len(err.splitlines()) == 1
    assert (csv_run / "documents.jsonl").read_bytes() == before


@pytest.mark.parametrize("content, extra, fragment", [
    (None, ["--text-column", "body"], "--text-column 'body' is not a column"),
    ("text,labels\na b,7\n", ["--target", "label"], "label 7 is not a class id"),
    ("text,labels\na b,good\n", [], "label 'good' is not a class id"),
    ("text\na b\n", ["--target", "label"], "--label-column 'labels' is not a column"),
    ("missing", [], "no such file"),
    ("text\n", [], "holds no document"),
])
def test_bad_data_is_refused_before_any_work(model_dir, data_files, tmp_path, capsys, content, extra, fragment):
    data = data_files / "docs.csv"
    if content == "missing":
        data = tmp_path / "nothing.csv"
    elif content is not None:
        data = tmp_path / "bad.csv"
        data.write_text(content)
    assert exit_code(_args(model_dir, data, tmp_path / "out", *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert fragment in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_aggregate_writes_a_ranking_per_class(csv_run, capsys):
    assert exit_code(["aggregate", str(csv_run), "--top", "3"]) == 0
    folder = csv_run / "aggregate-by-label"
    files = sorted(p.name for p in folder.iterdir())
    assert files == ["class_0_LABEL_0.csv", "class_1_LABEL_1.csv", "class_2_LABEL_2.csv", "per_document.csv"]
    ranking = list(csv.DictReader(open(folder / "class_0_LABEL_0.csv")))
    sums = [float(r["sum"]) for r in ranking]
    assert sums == sorted(sums, reverse=True)
    top = ranking[0]
    occurrences = [(r["id"], s) for r in _records(csv_run) if r["label"] == 0
                   for p, (t, s) in enumerate(zip(r["tokens"], r["token_scores"]))
                   if t == top["token"] and p not in r["special_positions"]]
    assert float(top["sum"]) == pytest.approx(sum(s for _, s in occurrences))
    assert int(top["count"]) == len(occurrences) and int(top["documents"]) == len({i for i, _ in occurrences})
    assert "class 0 (LABEL_0)" in capsys.readouterr().out


def test_aggregate_of_an_unfinished_run_says_so(tmp_path, capsys):
    (tmp_path / "manifest.json").write_text("{}")
    assert exit_code(["aggregate", str(tmp_path)]) == 2
    assert "not finished" in capsys.readouterr().err


# A fixture small enough to check by hand: two documents of class 1, one of class 0.
HAND = [
    record(id=0, label=1, prediction=1, tokens=["[CLS]", "good", "film", "##s", "[SEP]"],
           token_scores=[0.5, 0.25, 0.125, 0.0625, 0.5], special_positions=[0, 4]),
    record(id=1, label=1, prediction=0, tokens=["[CLS]", "good", "good", "plot", "[SEP]"],
           token_scores=[0.0, -0.5, 0.75, 0.25, 0.0], special_positions=[0, 4]),
    record(id=2, label=0, prediction=0, tokens=["<s>", "Ġbad", "Ġfil", "m", "</s>"],
           token_scores=[0.1, -0.5, 0.25, 0.5, 0.1], special_positions=[0, 4]),
]


def test_class_rankings_by_hand():
    by_label = {cls: {row[0]: row[1:] for row in rows} for cls, rows in class_rankings(HAND, "label").items()}
    # token: (sum, mean, count, documents); special tokens left out
    assert by_label[1] == {"good": (0.5, 0.5 / 3, 3, 2), "film": (0.125, 0.125, 1, 1), "##s": (0.0625, 0.0625, 1, 1),
                           "plot": (0.25, 0.25, 1, 1)}
    assert by_label[0] == {"Ġbad": (-0.5, -0.5, 1, 1), "Ġfil": (0.25, 0.25, 1, 1), "m": (0.5, 0.5, 1, 1)}
    assert [row[0] for row in class_rankings(HAND, "label")[1]] == ["good", "plot", "film", "##s"]
    by_prediction = class_rankings(HAND, "predicted")
    assert {row[0]: row[1] for row in by_prediction[0]}["good"] == 0.25


def test_subwords_merge_into_words_by_either_convention():
    assert words(HAND[0].tokens, HAND[0].token_scores.tolist(), [0, 4], True) == [("good", 0.25), ("films", 0.1875)]
    assert words(HAND[2].tokens, HAND[2].token_scores.tolist(), [0, 4], True) == [("bad", -0.5), ("film", 0.75)]
    merged = {cls: {row[0]: row[1] for row in rows} for cls, rows in class_rankings(HAND, "label", True).items()}
    assert merged[1]["films"] == 0.1875 and merged[0] == {"bad": -0.5, "film": 0.75}


def test_per_document_sums_by_token():
    assert sorted(per_document(HAND[1:2])) == [(1, "good", 0.25, 2), (1, "plot", 0.25, 1)]


def test_parquet_and_save_to_disk_folders_read_as_the_csv_does(data_files, tmp_path):
    import datasets
    import pandas as pd

    from fastig.app.dataset import read_rows
    from fastig.errors import DataError

    expected = read_rows(str(data_files / "docs.csv"), limit=5)
    pd.DataFrame({"text": TEXTS, "labels": LABELS}).to_parquet(tmp_path / "docs.parquet")
    assert read_rows(str(tmp_path / "docs.parquet"), limit=5) == expected
    datasets.DatasetDict({"test": datasets.Dataset.from_dict({"text": TEXTS, "labels": LABELS})}).save_to_disk(
        str(tmp_path / "saved"))
    assert read_rows(str(tmp_path / "saved"), split="test", limit=5) == expected
    with pytest.raises(DataError, match="--split 'train' is not a split"):
        read_rows(str(tmp_path / "saved"), split="train")


def test_the_default_target_is_each_documents_prediction(model_dir, data_files, tmp_path):
    assert exit_code(_args(model_dir, data_files / "docs.csv", tmp_path / "predicted", "--limit", "4")) == 0
    records = _records(tmp_path / "predicted")
    assert [r["id"] for r in records] == [0, 1, 2, 3] and all(r["target"] == r["prediction"] for r in records)
