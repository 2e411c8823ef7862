"""`fastig dataset` and `fastig aggregate`: whole data sets, resumable, nothing lost, tokens ranked per class."""

import csv
import html
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from fastig.app.aggregate import ranked, tally

from conftest import hanging_after_shards, make_text, record, stop_at_group
from test_cli import exit_code

TEXTS = [make_text(5 + 3 * i, seed=i) for i in range(12)]
TEXTS[4] = "   "                                    # skipped, recorded in skipped.csv
TEXTS[7] = "2024"                                   # text that reads as a number: still a text
TEXTS[9] = '" the good " movie'                     # quotes of the text (a TSV's are all text)
LABELS = [i % 3 for i in range(12)]


@pytest.fixture(scope="module")
def model_dir(saved_model):
    return str(saved_model("bert"))


@pytest.fixture(scope="module")
def data_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    with open(folder / "docs.csv", "w", newline="", encoding="utf-8-sig") as f:
        csv.writer(f).writerows([("text", "labels"), *zip(TEXTS, LABELS)])
    # With a byte-order mark, as Windows tools write UTF-8.
    (folder / "docs.jsonl").write_text("".join(json.dumps({"text": t, "labels": y}) + "\n"
                                               for t, y in zip(TEXTS, LABELS)), encoding="utf-8-sig")
    (folder / "docs.tsv").write_text("text\tlabels\n" + "".join(f"{t}\t{y}\n" for t, y in zip(TEXTS, LABELS)),
                                     encoding="utf-8")
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
        # top and bottom: each shown token once at its highest positive (lowest negative) score, special tokens
        # left out
        best, worst = {}, {}
        for p, (token, score) in enumerate(zip(r["display_tokens"], r["token_scores"])):
            if p not in r["special_positions"]:
                best[token], worst[token] = max(best.get(token, -9), score), min(worst.get(token, 9), score)
        assert [t["score"] for t in r["top"]] == sorted((s for s in best.values() if s > 0), reverse=True)[:4]
        assert [t["score"] for t in r["bottom"]] == sorted(s for s in worst.values() if s < 0)[:4]
        assert all(r["display_tokens"][t["position"]] == t["token"] for t in r["top"] + r["bottom"])
        assert len({t["token"] for t in r["top"]}) == len(r["top"])
    summary = list(csv.DictReader(open(csv_run / "documents.csv")))
    assert [int(s["id"]) for s in summary] == [r["id"] for r in records]
    assert all(float(s["delta"]) == r["delta"] and int(s["tokens"]) == len(r["tokens"])
               for s, r in zip(summary, records))
    assert [(s["label_name"], s["prediction_name"], s["target_name"]) for s in summary] == \
        [(f"LABEL_{r['label']}", f"LABEL_{r['prediction']}", f"LABEL_{r['target']}") for r in records]
    settings = json.loads((csv_run / "manifest.json").read_text())["settings"]
    assert settings["n_steps"] == 8 and settings["target"] == "label" and settings["precision"] == "fp32"


@pytest.mark.parametrize("kind", ["jsonl", "tsv"])
def test_jsonl_and_tsv_give_the_records_csv_gives(model_dir, data_files, csv_run, tmp_path, kind):
    """The same texts (one of numbers, one with quotes) and labels whatever the file type; the files as Windows
    tools write them (a byte-order mark: JSONL's failed the read)."""
    assert exit_code(_args(model_dir, data_files / f"docs.{kind}", tmp_path / kind, "--target", "label")) == 0
    assert (tmp_path / kind / "documents.jsonl").read_text() == (csv_run / "documents.jsonl").read_text()


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
                   "integrand", "probs")
        assert {k: v for k, v in a.items() if k not in numbers} == {k: v for k, v in b.items() if k not in numbers}
        assert a["token_scores"] == pytest.approx(b["token_scores"], abs=1e-6)     # unit-norm per document
        assert a["integrand"] == pytest.approx(b["integrand"], rel=1e-5, abs=1e-7)
        for key in ("delta", "probability", "output_at_input", "output_at_baseline"):
            assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-6), key
    index = json.loads((out / "index.json").read_text())
    assert len(index) == 11 and sorted(i for ids in index.values() for i in ids) == [r["id"] for r in resumed]


def test_a_trial_on_the_first_documents_grows_into_the_whole_run(model_dir, data_files, csv_run, tmp_path,
                                                                  monkeypatch, capsys):
    """A trial on the first documents (--limit), then the whole data set in the same folder: the run was refused
    ("other settings: limit"), and the trial's documents were attributed again elsewhere. It grows now, keeping
    them; while it grows it reads as unfinished (its merged outputs, the trial's, are gone: never a finished run's
    files that lack the documents still to come); it never shrinks."""
    out = tmp_path / "run"
    trial = _args(model_dir, data_files / "docs.csv", out, "--target", "label", "--limit", "3")
    assert exit_code(trial) == 0 and len(_records(out)) == 3 and exit_code(["report", str(out)]) == 0
    whole = _args(model_dir, data_files / "docs.csv", out, "--target", "label")
    stop_at_group(monkeypatch, group=2)
    assert exit_code(whole) == 130
    monkeypatch.undo()
    assert "the run grows from --limit 3 to all (12 documents); the documents done are kept; report holds the " \
        "smaller run's: make it again at its end" in capsys.readouterr().err
    assert not (out / "documents.jsonl").exists() and exit_code(["report", str(out)]) == 2
    assert "of its 12 documents done so far" in capsys.readouterr().err
    assert exit_code(whole) == 0
    assert ", 0 skipped" not in capsys.readouterr().out
    grown, uninterrupted = _records(out), _records(csv_run)
    assert [r["id"] for r in grown] == [r["id"] for r in uninterrupted]
    for a, b in zip(grown, uninterrupted):      # to fp32 rounding: other documents share the model calls
        assert a["token_scores"] == pytest.approx(b["token_scores"], abs=1e-5)
    assert json.loads((out / "manifest.json").read_text())["settings"]["limit"] is None
    assert exit_code(_args(model_dir, data_files / "docs.csv", out, "--target", "label", "--limit", "5")) == 2
    assert "limit None (then) vs 5 (now) (--limit may grow between runs, not shrink)" in capsys.readouterr().err


def test_resuming_with_other_settings_is_refused_by_name(model_dir, data_files, csv_run, capsys):
    before = (csv_run / "documents.jsonl").read_bytes()
    args = _args(model_dir, data_files / "docs.csv", csv_run, "--target", "label")
    args[args.index("--n-steps") + 1] = "16"
    assert exit_code(args) == 2
    err = capsys.readouterr().err.strip()
    assert "n_steps 8 (then) vs 16 (now)" in err and len(err.splitlines()) == 1
    assert (csv_run / "documents.jsonl").read_bytes() == before


def test_resuming_with_other_versions_says_so(model_dir, data_files, tmp_path, capsys):
    """A run resumed after an upgrade of fastig, torch or transformers holds documents of both: said."""
    out = tmp_path / "run"
    args = _args(model_dir, data_files / "docs.csv", out, "--limit", "3")
    assert exit_code(args) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["versions"]["torch"] = "2.0.0"
    (out / "manifest.json").write_text(json.dumps(manifest))
    capsys.readouterr()
    assert exit_code(args) == 0
    err = capsys.readouterr().err
    assert "resuming a run begun with other versions: torch 2.0.0 (then) vs" in err
    assert json.loads((out / "manifest.json").read_text())["versions"]["torch"] == "2.0.0"


def _close_records(a: dict, b: dict) -> bool:
    """The same document's record from two runs: equal but for fp32 rounding in the numbers."""
    numbers = ("token_scores", "delta", "probability", "output_at_input", "output_at_baseline", "top", "bottom",
               "integrand", "probs")
    return ({k: v for k, v in a.items() if k not in numbers} == {k: v for k, v in b.items() if k not in numbers}
            and a["token_scores"] == pytest.approx(b["token_scores"], abs=1e-5)
            and a["delta"] == pytest.approx(b["delta"], abs=1e-6))


@pytest.mark.parametrize("stop", ["interrupt", "error"])
def test_a_stop_amid_a_shard_keeps_its_documents_done(model_dir, data_files, csv_run, tmp_path, monkeypatch, capsys,
                                                      stop):
    """Ctrl-C, a SIGTERM or an error (memory running out) amid a shard writes the documents finished before it
    (whole groups) as a shard of their own, and the resume does only the rest: the shard's work was lost before
    (~30 s by default, a whole --shard-size of documents)."""
    out = tmp_path / "run"
    args = _args(model_dir, data_files / "docs.csv", out, "--target", "label")
    args[args.index("--shard-size") + 1] = "11"     # one shard of every document
    # after the first group: the longest document, alone
    stop_at_group(monkeypatch, error=KeyboardInterrupt if stop == "interrupt" else RuntimeError("out of memory"))
    if stop == "interrupt":
        assert exit_code(args) == 130
        assert "run the same command again to continue" in capsys.readouterr().err
    else:
        with pytest.raises(RuntimeError, match="out of memory"):
            exit_code(args)
    kept = [json.loads(line) for path in (out / "shards").glob("*.jsonl") for line in path.read_text().splitlines()]
    assert [r["id"] for r in kept] == [11]
    monkeypatch.undo()
    assert exit_code(args) == 0
    assert "10 attributed now" in capsys.readouterr().out
    by_label = {r["id"]: r for r in _records(csv_run)}
    resumed = _records(out)
    assert [r["id"] for r in resumed] == list(by_label) and _close_records(kept[0], by_label[11])
    assert all(_close_records(r, by_label[r["id"]]) for r in resumed)


def test_the_time_left_is_told_by_tokens_as_documents_go_longest_first(model_dir, tmp_path, monkeypatch):
    """The bar counts documents, but the time left comes from the tokens done and to do: documents go longest
    first, so the time per document so far overstated it (tqdm's own estimate said 1:44:42 after the first of
    300 film synopses, whose mean length was a sixth of the first's). On a clock where time goes with
    tokens, the time left is right from the first shard."""
    from tqdm import tqdm

    import fastig
    from fastig.app import dataset

    texts = [make_text(40, seed=1)] + [make_text(5, seed=2 + i) for i in range(8)]     # 40 and 8 x 5 words
    data = tmp_path / "docs.csv"
    with open(data, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("text",), *((text,) for text in texts)])
    clock, attribute, shown = [0.0], fastig.Engine.attribute, []

    def attribute_on_the_clock(engine, texts, **kwargs):       # a second a text token
        result = attribute(engine, texts, **kwargs)
        clock[0] += sum(len(document.tokens) - 2 for document in result.documents)
        return result
    monkeypatch.setattr(fastig.Engine, "attribute", attribute_on_the_clock)
    monkeypatch.setattr(dataset, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    monkeypatch.setattr(tqdm, "set_postfix_str", lambda bar, text, refresh=True: shown.append(text))
    assert exit_code(_args(model_dir, data, tmp_path / "run", "--shard-size", "1")) == 0
    left = [text.split(", ")[1] for text in shown if "token-steps/s" in text]     # after each shard, not the call's
    assert len(left) == 9 and (left[0], left[4], left[-1]) == ("00:40 left", "00:20 left", "00:00 left")


def test_a_target_by_its_label_name_is_that_class(model_dir, data_files, tmp_path):
    out = tmp_path / "named"
    assert exit_code(_args(model_dir, data_files / "docs.csv", out, "--target", "LABEL_2", "--limit", "3")) == 0
    assert [r["target"] for r in _records(out)] == [2, 2, 2]
    assert json.loads((out / "manifest.json").read_text())["settings"]["target"] == 2
    several = tmp_path / "several"      # "A,B": those classes of every document, a record each
    assert exit_code(_args(model_dir, data_files / "docs.csv", several, "--target", "LABEL_2,0", "--limit", "2")) == 0
    assert [(r["id"], r["target"]) for r in _records(several)] == [(0, 2), (0, 0), (1, 2), (1, 0)]
    assert json.loads((several / "manifest.json").read_text())["settings"]["target"] == [2, 0]


def test_target_all_explains_every_class_of_every_document_and_resumes(model_dir, data_files, csv_run, tmp_path):
    """--target all: a record per (document, class), each the one a run for that class gives (the label run's
    where the class is the label); a stopped run resumes to the same records; reports and rankings read it."""
    out = tmp_path / "all"
    assert exit_code(_args(model_dir, data_files / "docs.csv", out, "--target", "all")) == 0
    records = _records(out)
    ids = [i for i in range(12) if i != 4]
    assert [(r["id"], r["target"]) for r in records] == [(i, t) for i in ids for t in range(3)]
    by_label = {r["id"]: r for r in _records(csv_run)}
    assert all(_close_records(r, by_label[r["id"]]) for r in records if r["target"] == r["label"])
    summary = list(csv.DictReader(open(out / "documents.csv")))
    assert [(int(s["id"]), int(s["target"])) for s in summary] == [(r["id"], r["target"]) for r in records]
    index = json.loads((out / "index.json").read_text())
    assert sorted(i for shard in index.values() for i in shard) == ids
    # a shard lost: its documents are done again, every class of them, and merged once
    shard = sorted((out / "shards").glob("*.jsonl"))[1]
    shard.unlink()
    assert exit_code(_args(model_dir, data_files / "docs.csv", out, "--target", "all")) == 0
    resumed = _records(out)
    assert [(r["id"], r["target"]) for r in resumed] == [(r["id"], r["target"]) for r in records]
    assert all(_close_records(a, b) for a, b in zip(resumed, records))
    assert exit_code(["report", str(out), "--out", str(tmp_path / "report")]) == 0
    pages = {p.name for p in (tmp_path / "report").glob("document-*.html")}
    assert pages == {f"document-{i}-target-{t}.html" for i in ids for t in range(3)}
    assert exit_code(["aggregate", str(out), "--top", "3"]) == 0


def test_a_resume_redoes_deleted_and_corrupt_shards_and_merges_duplicates_once(model_dir, data_files, tmp_path,
                                                                               capsys):
    from fastig.app.dataset import shard_name

    out = tmp_path / "run"
    args = _args(model_dir, data_files / "docs.csv", out, "--target", "label")
    assert exit_code(args) == 0
    complete = {r["id"]: r for r in _records(out)}
    shards = sorted((out / "shards").glob("*.jsonl"))
    assert len(shards) == 4                                     # 11 documents, 3 per shard
    deleted, truncated, duplicated = shards[0], shards[1], shards[2]
    lost = {json.loads(line)["id"] for path in (deleted, truncated) for line in path.read_text().splitlines()}
    deleted.unlink()
    truncated.write_text(truncated.read_text()[:-40])            # a torn write: its content no longer matches its name
    copy = duplicated.read_text().splitlines(keepends=True)[:2]  # two documents in a second, sound shard
    (out / "shards" / shard_name("".join(copy))).write_text("".join(copy))
    for name in ("documents.jsonl", "documents.csv", "index.json"):
        (out / name).unlink()
    capsys.readouterr()
    assert exit_code(args) == 0
    captured = capsys.readouterr()
    assert f"shard {truncated.name} is unreadable" in captured.err and (out / "shards" / "corrupt" / truncated.name).exists()
    assert f"{len(lost)} attributed now" in captured.out
    resumed = _records(out)
    assert [r["id"] for r in resumed] == sorted(complete)       # every document exactly once
    assert all(_close_records(r, complete[r["id"]]) for r in resumed)


def test_changed_data_or_model_is_refused_and_the_same_elsewhere_accepted(model_dir, data_files, tmp_path,
                                                                          tokenizer, capsys):
    import shutil

    from conftest import make_model

    data, model = tmp_path / "docs.csv", tmp_path / "model"
    shutil.copy(data_files / "docs.csv", data)
    shutil.copytree(model_dir, model)
    out = tmp_path / "run"
    assert exit_code(_args(str(model), data, out)) == 0
    before = (out / "documents.jsonl").read_bytes()
    data.write_text(data.read_text().replace(TEXTS[0], "the good film"))      # edited in place
    capsys.readouterr()
    assert exit_code(_args(str(model), data, out)) == 2
    assert "the data's content changed" in capsys.readouterr().err
    shutil.copy(data_files / "docs.csv", data)
    make_model("bert", seed=1).save_pretrained(model)                          # re-trained in place
    assert exit_code(_args(str(model), data, out)) == 2
    assert "the model's content changed" in capsys.readouterr().err
    moved_data, moved_model = tmp_path / "elsewhere.csv", tmp_path / "elsewhere-model"
    shutil.copy(data_files / "docs.csv", moved_data)
    shutil.copytree(model_dir, moved_model)
    assert exit_code(_args(str(moved_model), moved_data, out)) == 0           # the same contents by other paths
    assert " 0 attributed now" in capsys.readouterr().out and (out / "documents.jsonl").read_bytes() == before


def test_the_label_column_is_found_by_its_usual_names(model_dir, tmp_path):
    """imdb, sst2 and ag_news call their column "label", go_emotions "labels": either is read without
    --label-column (a default of "labels" alone ran imdb-like sets without their labels, saying nothing);
    '' reads none; the manifest names the column read (else the one asked for)."""
    data = tmp_path / "imdb.jsonl"
    data.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in zip(TEXTS[:4], LABELS[:4])))
    assert exit_code(_args(model_dir, data, tmp_path / "found", "--target", "label")) == 0
    assert [r["label"] for r in _records(tmp_path / "found")] == LABELS[:4]
    assert json.loads((tmp_path / "found" / "manifest.json").read_text())["settings"]["label_column"] == "label"
    assert exit_code(_args(model_dir, data, tmp_path / "none", "--label-column", "")) == 0
    assert [r["label"] for r in _records(tmp_path / "none")] == [None] * 4
    # as runs before this version wrote it, so that they resume
    assert json.loads((tmp_path / "none" / "manifest.json").read_text())["settings"]["label_column"] == ""


def test_the_text_column_is_found_by_its_usual_names(model_dir, tmp_path):
    """GLUE's SST-2 calls its texts "sentence" (a default of "text" alone refused it until named): read
    without --text-column, as the same texts under "text" are, and the manifest names the column read."""
    sst2 = tmp_path / "sst2.tsv"
    sst2.write_text("idx\tsentence\tlabel\n" + "".join(f"{i}\t{t}\t{y}\n" for i, (t, y) in
                                                        enumerate(zip(TEXTS[:4], LABELS[:4]))))
    assert exit_code(_args(model_dir, sst2, tmp_path / "sst2", "--target", "label")) == 0
    records = _records(tmp_path / "sst2")
    assert [r["text"] for r in records] == TEXTS[:4] and [r["label"] for r in records] == LABELS[:4]
    assert json.loads((tmp_path / "sst2" / "manifest.json").read_text())["settings"]["text_column"] == "sentence"


@pytest.mark.parametrize("content, extra, fragment", [
    (None, ["--text-column", "body"], "--text-column 'body' is not a column"),
    ("body,labels\na b,0\n", [], "has no 'text' or 'sentence' or 'content' or 'review' column: name the column "
                                 "of the texts with --text-column; columns: body, labels"),
    (None, ["--pair-column", "hypothesis"], "--pair-column 'hypothesis' is not a column"),
    ("text,labels\na b,7\n", ["--target", "label"], "label 7 is not a class id"),
    ("text,labels\na b,good\n", [], "label 'good' is not a class id"),
    ('{"text": "a b", "labels": [0, 7]}\n', [], "label [0, 7] is not a class id"),
    ("text\na b\n", ["--target", "label"], "has no 'labels' or 'label' column (--target label needs labels)"),
    (None, ["--label-column", "sentiment"], "--label-column 'sentiment' is not a column"),
    ("missing", [], "no such file"),
    ("text\n", [], "holds no document"),
    (None, ["--target", "positive"], "--target 'positive' is not a class index, a label of this model"),
])
def test_bad_data_is_refused_before_any_work(model_dir, data_files, tmp_path, capsys, content, extra, fragment):
    data = data_files / "docs.csv"
    if content == "missing":
        data = tmp_path / "nothing.csv"
    elif content is not None:
        data = tmp_path / ("bad.jsonl" if content.startswith("{") else "bad.csv")
        data.write_text(content)
    assert exit_code(_args(model_dir, data, tmp_path / "out", *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert fragment in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_documents_cut_to_the_models_length_are_counted_not_said_one_by_one(model_dir, data_files, tmp_path,
                                                                             capsys):
    """A data set of long reviews printed a warning line per document cut (naming its place in a shard's
    batch, not its id): the closing line counts them and documents.csv gives each one's truncated_tokens."""
    assert exit_code(_args(model_dir, data_files / "docs.jsonl", tmp_path / "out", "--max-length", "20")) == 0
    said = capsys.readouterr()
    rows = list(csv.DictReader(open(tmp_path / "out" / "documents.csv")))
    cut = [row for row in rows if int(row["truncated_tokens"]) > 0]
    assert 0 < len(cut) < len(rows) and "warning" not in said.err
    assert f", {len(cut)} cut to the model's length (documents.csv's truncated_tokens);" in said.out.splitlines()[-1]
    lengths = {r["id"]: len(r["tokens"]) for r in _records(tmp_path / "out")}
    assert all(lengths[int(row["id"])] == 22 for row in cut)     # CLS + 20 + SEP


def test_documents_short_of_the_accuracy_are_counted_and_each_says_what_it_spent(model_dir, data_files, tmp_path,
                                                                                  capsys):
    """The default call states an accuracy: documents.csv gives each document's evaluations and estimated error, and
    the closing line counts those that --max-steps stopped short of it (a study read none of this but from
    documents.jsonl)."""
    out = tmp_path / "out"
    assert exit_code(["dataset", "--model", model_dir, "--data", str(data_files / "docs.csv"), "--out", str(out),
                      "--limit", "6", "--accuracy", "1e-5", "--max-steps", "20"]) == 0
    said = capsys.readouterr().out.splitlines()[-1]
    rows, records = list(csv.DictReader(open(out / "documents.csv"))), _records(out)
    assert [(int(row["evaluations"]), float(row["estimated_error"])) for row in rows] == \
        [(r["evaluations"], r["estimated_error"]) for r in records]
    short = sum(not r["tolerance_met"] for r in records)
    assert 0 < short and f", {short} short of --accuracy 1e-05 (stopped at --max-steps 20" in said
    assert exit_code(_args(model_dir, data_files / "docs.csv", tmp_path / "fixed", "--limit", "3")) == 0
    assert "short of" not in capsys.readouterr().out
    rows = list(csv.DictReader(open(tmp_path / "fixed" / "documents.csv")))
    assert [(row["evaluations"], row["estimated_error"]) for row in rows] == [("8", "")] * 3


def test_the_datas_own_ids_are_written_beside_each_record(model_dir, tmp_path, capsys):
    """A data set's own ids ('id' by default, as go_emotions', or --id-column) come out beside fastig's row
    numbers, as the file has them (a CSV's "007" is not 7), in documents.csv, documents.jsonl and the report, so
    results join back to the data; a run begun without them gets them when it is merged again."""
    ids = ["007", "a-1", "12", "x y", "z"]
    data = tmp_path / "docs.csv"
    with open(data, "w", newline="") as f:
        csv.writer(f).writerows([("text", "id", "key"), *((make_text(6, seed=i), ids[i], i * 10) for i in range(5))])
    out = tmp_path / "out"
    assert exit_code(_args(model_dir, data, out, "--id-column", "")) == 0
    assert {row["data_id"] for row in csv.DictReader(open(out / "documents.csv"))} == {""}
    assert exit_code(_args(model_dir, data, out)) == 0 and "0 attributed now, 5 from before" in capsys.readouterr().out
    rows = list(csv.DictReader(open(out / "documents.csv")))
    assert [(row["id"], row["data_id"]) for row in rows] == [(str(i), ids[i]) for i in range(5)]
    assert [(r["id"], r["data_id"]) for r in _records(out)] == list(enumerate(ids))
    assert exit_code(["report", str(out)]) == 0
    index = (out / "report" / "index.html").read_text()
    assert all(f'<td data-value="{html.escape(i)}">{html.escape(i)}</td>' in index for i in ids)
    assert "<h1>Document 0 (id 007): " in (out / "report" / "document-0.html").read_text()
    assert exit_code(_args(model_dir, data, tmp_path / "keys", "--id-column", "key", "--limit", "2")) == 0
    assert [r["data_id"] for r in _records(tmp_path / "keys")] == ["0", "10"]
    assert exit_code(_args(model_dir, data, tmp_path / "nope", "--id-column", "nope")) == 2
    assert "--id-column 'nope' is not a column of" in capsys.readouterr().err and not (tmp_path / "nope").exists()


def test_a_csvs_lists_of_labels_read_as_a_multi_label_data_sets():
    import transformers
    from fastig.app.dataset import Row, class_ids

    config = transformers.BertConfig(id2label={0: "joy", 1: "anger", 2: "fear"})
    rows = [Row(0, "a", '["fear", 0]'), Row(1, "b", "[]"), Row(2, "c", 1)]
    assert [r.label for r in class_ids(rows, config)] == [[0, 2], [], [1]]


def test_a_multi_label_data_set_explains_each_documents_labels(tokenizer, tmp_path, capsys, monkeypatch):
    """Labels as lists (go_emotions' kind), by id or name: --target label gives a record per label of each
    document, each the Python API's for that label (its sigmoid); a document with no label is skipped, said
    in skipped.csv; reports name every label; rankings --by label are refused, --by target given."""
    import fastig
    from conftest import make_model

    model = make_model("bert")
    model.config.problem_type = "multi_label_classification"
    model.config.id2label, model.config.label2id = {0: "joy", 1: "anger", 2: "fear"}, {"joy": 0, "anger": 1, "fear": 2}
    model_dir = tmp_path / "model"
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    texts = [make_text(9, seed=1), make_text(4, seed=2), make_text(7, seed=3), make_text(12, seed=4)]
    labels = [[0, 2], ["anger"], [], [2, 1, 0]]
    data = tmp_path / "multi.jsonl"
    data.write_text("".join(json.dumps({"text": t, "labels": y}) + "\n" for t, y in zip(texts, labels)))
    out = tmp_path / "out"
    assert exit_code(_args(str(model_dir), data, out, "--target", "label")) == 0
    printed = capsys.readouterr().out       # the skipped count: before any work and while running
    assert "3 documents in " in printed and ", 1 skipped (skipped.csv)" in printed
    records = _records(out)
    assert [(r["id"], r["target"]) for r in records] == [(0, 0), (0, 2), (1, 1), (3, 0), (3, 1), (3, 2)]
    assert [r["label"] for r in records] == [[0, 2], [0, 2], [1], [0, 1, 2], [0, 1, 2], [0, 1, 2]]
    with open(out / "documents.csv", encoding="utf-8") as f:     # the classes by name too, a list's joined
        assert [(s["label_name"], s["target_name"]) for s in csv.DictReader(f)] == [
            ("joy; fear", "joy"), ("joy; fear", "fear"), ("anger", "anger"), ("joy; anger; fear", "joy"),
            ("joy; anger; fear", "anger"), ("joy; anger; fear", "fear")]
    engine = fastig.Engine(model, tokenizer)
    for r in records:
        alone = engine.attribute(texts[r["id"]], target=r["target"], n_steps=8)
        assert alone.output == "sigmoid"
        assert r["token_scores"] == pytest.approx(alone.token_scores[0].tolist(), abs=1e-5)
    skipped = list(csv.reader(open(out / "skipped.csv")))
    assert skipped == [["id", "reason"], ["2", "no label to explain (--target label)"]]
    assert exit_code(["report", str(out), "--out", str(tmp_path / "report")]) == 0
    assert "label joy (0), fear (2)" in (tmp_path / "report" / "document-0-target-2.html").read_text()
    for command in ("aggregate", "report"):     # no one label per document to group by
        assert exit_code([command, str(out), "--by", "label"]) == 2
        assert "a list of labels each" in capsys.readouterr().err
    assert exit_code(["aggregate", str(out), "--by", "target"]) == 0
    # documents of 3, 2 and 1 labels (longest first) share a call in groups of their own: a stop in the third
    # group keeps the first two's
    for error, folder in ((RuntimeError("out of memory"), tmp_path / "failed"),
                          (KeyboardInterrupt, tmp_path / "stopped")):
        args = _args(str(model_dir), data, folder, "--target", "label")
        args[args.index("--shard-size") + 1] = "4"
        stop_at_group(monkeypatch, 3, error)
        if error is KeyboardInterrupt:
            assert exit_code(args) == 130
        else:       # an error keeps them too
            with pytest.raises(RuntimeError):
                exit_code(args)
        kept = [json.loads(line) for path in (folder / "shards").glob("*.jsonl")
                for line in path.read_text().splitlines()]
        assert sorted((r["id"], r.get("target", r.get("skipped"))) for r in kept) == [
            (0, 0), (0, 2), (2, "no label to explain (--target label)"), (3, 0), (3, 1), (3, 2)]
    monkeypatch.undo()
    assert exit_code(args) == 0
    assert all(_close_records(a, b) for a, b in zip(_records(folder), records, strict=True))


def test_a_multi_label_models_prediction_is_each_label_above_one_half(multi_label_run, tmp_path, capsys):
    """The default --target predicted on a multi-label model explains every label whose sigmoid is above 1/2, a
    record each, as its own call explains it (its top label alone left out a document's other emotions), and
    the top label of a document with none; a run begun when "predicted" was the top label alone is not resumed
    into these records."""
    import fastig

    model_dir, texts, expected = multi_label_run
    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    out = tmp_path / "out"
    assert exit_code(_args(str(model_dir), data, out)) == 0
    records = _records(out)
    assert sorted((r["id"], r["target"]) for r in records) == sorted(expected)
    engine = fastig.Engine(str(model_dir))
    for r in records:
        alone = engine.attribute(texts[r["id"]], target=r["target"], n_steps=8)
        assert r["token_scores"] == pytest.approx(alone.token_scores[0].tolist(), abs=1e-5)
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["settings"]["predicted"]           # as a run of an earlier version wrote it
    (out / "manifest.json").write_text(json.dumps(manifest))
    capsys.readouterr()
    assert exit_code(_args(str(model_dir), data, out)) == 2
    assert "predicted None (then) vs 'each label above 1/2' (now)" in capsys.readouterr().err


def test_a_pair_column_makes_each_document_a_pair_of_texts(model_dir, tmp_path):
    """--pair-column: each document is (text, pair) as the tokenizer pairs them, equal to the Python API's;
    a pair missing either text is skipped, saying which."""
    import fastig

    pairs = [(make_text(6, seed=1), make_text(4, seed=2)), (make_text(9, seed=3), ""), (make_text(3, seed=4), "good")]
    data = tmp_path / "pairs.csv"
    with open(data, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("premise", "hypothesis"), *pairs])
    out = tmp_path / "run"
    assert exit_code(_args(model_dir, data, out, "--text-column", "premise", "--pair-column", "hypothesis")) == 0
    records = _records(out)
    assert [r["id"] for r in records] == [0, 2]
    assert records[0]["text"] == pairs[0][0] + "\n\n" + pairs[0][1]
    assert records[0]["tokens"].count("[SEP]") == 2
    with open(out / "skipped.csv", encoding="utf-8") as f:
        assert list(csv.DictReader(f))[0]["reason"] == "empty text (--pair-column)"
    model, tokenizer = fastig.load_classifier(model_dir)
    alone = fastig.Engine(model, tokenizer).attribute([pairs[0]], n_steps=8)
    assert records[0]["delta"] == pytest.approx(float(alone.delta[0]), abs=1e-6)
    assert records[0]["token_scores"] == pytest.approx(alone.token_scores[0].tolist(), abs=1e-6)


def test_aggregate_writes_a_ranking_per_target_naming_it_in_every_row(csv_run, capsys):
    assert exit_code(["aggregate", str(csv_run), "--top", "3", "--tokens"]) == 0
    folder = csv_run / "aggregate-by-target-tokens"
    files = sorted(p.name for p in folder.iterdir())
    assert files == ["per_document.csv", "target_0_LABEL_0.csv", "target_1_LABEL_1.csv", "target_2_LABEL_2.csv"]
    ranking = list(csv.DictReader(open(folder / "target_0_LABEL_0.csv")))
    sums = [float(r["sum"]) for r in ranking]
    assert sums == sorted(sums, reverse=True) and {r["target"] for r in ranking} == {"0"}
    tokens = [r["token"] for r in ranking]
    records = [r for r in _records(csv_run) if r["target"] == 0]
    assert sorted(tokens) == sorted({t for r in records for p, t in enumerate(r["display_tokens"])
                                     if p not in r["special_positions"]})     # each token once (the file repeated
    for row in ranking:                                                         # its last row, every row)
        occurrences = [(r["id"], s) for r in records for p, (t, s) in enumerate(zip(r["display_tokens"],
                                                                                  r["token_scores"]))
                       if t == row["token"] and p not in r["special_positions"]]
        assert float(row["sum"]) == pytest.approx(sum(s for _, s in occurrences))
        assert int(row["count"]) == len(occurrences) and int(row["documents"]) == len({i for i, _ in occurrences})
        assert float(row["document_mean"]) == pytest.approx(float(row["sum"]) / int(row["documents"]))
    printed = capsys.readouterr().out
    documents = sum(r["target"] == 0 for r in _records(csv_run))    # the tokens it counts: distinct ones, the rows
    assert f"target LABEL_0 (0): {documents} documents, {len(ranking)} distinct tokens (" in printed
    # Each group's two columns: the highest sums, all positive, and the lowest, all negative (30 characters each).
    rows = [line for line in printed.splitlines() if line.startswith("  ") and "highest" not in line]
    highest = [float(line[20:29]) for line in rows if line[2:20].strip()]
    lowest = [float(line[50:59]) for line in rows if len(line) > 32]
    assert highest and lowest and all(v > 0 for v in highest) and all(v < 0 for v in lowest)


def test_a_long_aggregate_shows_its_reading_and_counting(csv_run, tmp_path, monkeypatch, capsys):
    """25,000 documents read and counted for about half a minute without a word; past the delays bars show."""
    from fastig.app import aggregate, dataset

    assert exit_code(["aggregate", str(csv_run), "--out", str(tmp_path / "quick")]) == 0
    assert "reading documents" not in capsys.readouterr().err
    monkeypatch.setattr(dataset, "READING_BAR_DELAY_S", 0.0)
    monkeypatch.setattr(aggregate, "COUNTING_BAR_DELAY_S", 0.0)
    assert exit_code(["aggregate", str(csv_run), "--out", str(tmp_path / "long")]) == 0
    shown = capsys.readouterr().err
    assert "reading documents" in shown and "counting words" in shown
    assert [p.read_bytes() for p in sorted((tmp_path / "quick").iterdir())] == \
        [p.read_bytes() for p in sorted((tmp_path / "long").iterdir())]


def test_report_without_out_writes_into_the_run_as_aggregate_does(model_dir, data_files, csv_run, capsys):
    """`fastig report RUN` refused to run without --out, where `fastig aggregate RUN` writes into the run: each
    choice of unit and grouping its own folder, so that one report never replaces another's pages."""
    for options, folder in (([], "report"), (["--tokens"], "report-tokens"),
                            (["--by", "label", "--tokens"], "report-by-label-tokens")):
        assert exit_code(["report", str(csv_run), *options]) == 0
        assert str(csv_run / folder / "index.html") in capsys.readouterr().out
        assert len(list((csv_run / folder).glob("document-*.html"))) == 11
    # the run with its reports inside still resumes, having nothing left to do
    assert exit_code(_args(model_dir, data_files / "docs.csv", csv_run, "--target", "label")) == 0
    assert "0 attributed now" in capsys.readouterr().out


def test_a_run_of_one_document_says_one_document(model_dir, data_files, tmp_path, capsys):
    """The lines a one-document run prints and its report's index said "1 documents"."""
    out = tmp_path / "run"
    assert exit_code(_args(model_dir, data_files / "docs.csv", out, "--limit", "1")) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith(f"1 document in {out}: 1 attributed now")
    assert exit_code(["aggregate", str(out)]) == 0
    assert ": 1 document, " in capsys.readouterr().out
    assert exit_code(["report", str(out)]) == 0
    assert "<p>1 document; click" in (out / "report" / "index.html").read_text()


def test_a_runs_log_has_its_bars_lines_without_terminal_codes(model_dir, data_files, tmp_path, capsys):
    """Into a file (a cluster job's log) the shard's bar was nested under the documents' bar, and each of its
    lines moved the cursor up: "^[[A" all through the log."""
    assert exit_code(_args(model_dir, data_files / "docs.csv", tmp_path / "run", "--limit", "4")) == 0
    log = capsys.readouterr().err
    assert "documents:" in log and "attributing:" in log and "\x1b" not in log


def test_aggregate_ranks_the_words_people_read_unless_asked_for_tokens(byte_level_tokenizer, tmp_path, capsys):
    """A byte-level BPE splits "unreadable" into "u", "n", "r", "ea", "d", "a", "bl", "e": the default ranking is of the
    words `attribute` and the reports show (it ranked the pieces, unreadable, unless --merge-subwords was given);
    --tokens ranks the pieces, as the seed's notebook did."""
    from conftest import make_byte_level_model

    make_byte_level_model("roberta", byte_level_tokenizer).save_pretrained(tmp_path / "model")
    byte_level_tokenizer.save_pretrained(tmp_path / "model")
    texts = ["Neural networks learn unreadable transformers.", "We propose a new attention mechanism for long documents."]
    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    out = tmp_path / "run"
    assert exit_code(_args(str(tmp_path / "model"), data, out, "--target", "0")) == 0
    ranked_units = {}
    for flags, folder in (([], "aggregate-by-target"), (["--tokens"], "aggregate-by-target-tokens"),
                          (["--merge-subwords"], "aggregate-by-target")):
        assert exit_code(["aggregate", str(out), *flags]) == 0
        with open(out / folder / "target_0_LABEL_0.csv", encoding="utf-8") as f:
            ranked_units[tuple(flags)] = {row["token"] for row in csv.DictReader(f)}
    printed = capsys.readouterr().out
    assert "distinct words (" in printed and "distinct tokens (" in printed
    words = ranked_units[()]
    assert words == ranked_units[("--merge-subwords",)]
    assert words == {"Neural", "networks", "learn", "unreadable", "transformers", ".", "We", "propose", "a", "new",
                     "attention", "mechanism", "for", "long", "documents"}
    tokens = ranked_units[("--tokens",)]
    assert {"ea", "bl", "an"} <= tokens and not {"unreadable", "transformers"} & tokens
    assert exit_code(["aggregate", str(out), "--tokens", "--merge-subwords"]) == 2


def test_aggregate_of_an_unfinished_run_says_so(tmp_path, capsys):
    (tmp_path / "manifest.json").write_text("{}")
    assert exit_code(["aggregate", str(tmp_path)]) == 2
    assert "not finished" in capsys.readouterr().err


def test_an_unfinished_run_is_reported_and_ranked_so_far_when_asked(model_dir, data_files, tmp_path, monkeypatch,
                                                                    capsys):
    """A run of hours could not be looked at before its end: with --unfinished, report and aggregate take the
    documents of its sound shards so far (the run may be going on), say that they are a part, and never write
    what is taken for a finished run's; without it they say how many they would take. The data's own ids are
    in them (the shards keep them)."""
    data, out = tmp_path / "docs.jsonl", tmp_path / "run"
    data.write_text("".join(json.dumps({"id": f"r{i:02}", "text": t, "labels": y}) + "\n"
                            for i, (t, y) in enumerate(zip(TEXTS, LABELS))))
    args = _args(model_dir, data, out, "--target", "label")
    stop_at_group(monkeypatch, group=3)
    assert exit_code(args) == 130
    monkeypatch.undo()
    capsys.readouterr()
    done = sorted({json.loads(line)["id"] for path in (out / "shards").glob("*.jsonl")
                   for line in path.read_text().splitlines() if "skipped" not in json.loads(line)})
    assert 0 < len(done) < 11
    for command in ("report", "aggregate"):
        assert exit_code([command, str(out)]) == 2
        assert f"or add --unfinished to take {len(done)} of its 12 documents done so far" in \
            capsys.readouterr().err
    assert exit_code(["report", str(out), "--unfinished"]) == 0
    said = capsys.readouterr().out
    assert f"unfinished run: {len(done)} of its 12 documents done so far" in said
    report = out / "report-unfinished"
    assert sorted(int(p.stem.split("-")[1]) for p in report.glob("document-*.html")) == done
    index = (report / "index.html").read_text()
    assert f"(unfinished: {len(done)} of its 12 documents so far)" in index
    assert all(f">r{i:02}<" in index for i in done)
    assert f"Document {done[0]} (id r{done[0]:02})" in (report / f"document-{done[0]}.html").read_text()
    assert exit_code(["aggregate", str(out), "--unfinished"]) == 0
    said = capsys.readouterr().out
    assert said.startswith(f"unfinished run: {len(done)} of its 12 documents done so far") and \
        (out / "aggregate-by-target-unfinished" / "per_document.csv").is_file()
    with open(out / "aggregate-by-target-unfinished" / "per_document.csv") as f:
        ids = {(int(row["id"]), row["data_id"]) for row in csv.DictReader(f)}
    assert sorted(ids) == [(i, f"r{i:02}") for i in done]
    assert not (out / "documents.jsonl").exists() and not (out / "report").exists()
    assert exit_code(args) == 0 and exit_code(["report", str(out)]) == 0       # finished: the whole run
    assert len(list((out / "report").glob("document-*.html"))) == 11


# A fixture small enough to check by hand: two documents of class 1, one of class 0.
HAND = [
    record(id=0, label=1, prediction=1, tokens=["[CLS]", "good", "film", "##s", "[SEP]"],
           token_scores=[0.5, 0.25, 0.125, 0.0625, 0.5], special_positions=[0, 4]),
    record(id=1, label=1, prediction=0, tokens=["[CLS]", "good", "good", "plot", "[SEP]"],
           token_scores=[0.0, -0.5, 0.75, 0.25, 0.0], special_positions=[0, 4]),
    record(id=2, label=0, prediction=0, tokens=["<s>", "Ġbad", "Ġfil", "m", "</s>"],
           token_scores=[0.1, -0.5, 0.25, 0.5, 0.1], special_positions=[0, 4]),
]


def _by_token(rankings, group):
    return {row.token: (row.sum, row.mean, row.count, row.documents) for row in rankings[group]}


def test_class_rankings_by_hand():
    # by target (each document's prediction here): 0 and 2 attribute class 0, document 1 class 1
    by_target = tally(HAND, "target", merge_subwords=False).rankings
    assert _by_token(by_target, 1) == {"good": (0.25, 0.25, 1, 1), "film": (0.125, 0.125, 1, 1),
                                       "##s": (0.0625, 0.0625, 1, 1)}
    assert _by_token(by_target, 0) == {"good": (0.25, 0.125, 2, 1), "plot": (0.25, 0.25, 1, 1),
                                       "Ġbad": (-0.5, -0.5, 1, 1), "Ġfil": (0.25, 0.25, 1, 1), "m": (0.5, 0.5, 1, 1)}
    assert all(row.target == target for target, rows in by_target.items() for row in rows)
    # by label and target: document 1 (label 1, target 0) apart from document 0 (label 1, target 1)
    by_label = tally(HAND, "label", merge_subwords=False).rankings
    assert set(by_label) == {(1, 1), (1, 0), (0, 0)}
    assert _by_token(by_label, (1, 0)) == {"good": (0.25, 0.125, 2, 1), "plot": (0.25, 0.25, 1, 1)}
    assert [row.token for row in by_label[(1, 1)]] == ["good", "film", "##s"]
    # mean rankings leave out tokens seen fewer than 3 times unless asked
    assert ranked(by_target[0], "mean") == [] and [r.token for r in ranked(by_target[0], "mean", 1)][:1] == ["m"]


def test_subwords_merge_into_words_by_either_convention():
    from fastig.display import words

    assert [(w.text, w.score) for w in words(HAND[0])] == [("good", 0.25), ("films", 0.1875)]
    assert [(w.text, w.score) for w in words(HAND[2])] == [("bad", -0.5), ("film", 0.75)]
    merged = {group: {row.token: row.sum for row in rows} for group, rows in tally(HAND, "target", True).rankings.items()}
    assert merged[1]["films"] == 0.1875 and merged[0] == {"good": 0.25, "plot": 0.25, "bad": -0.5, "film": 0.75}


def test_words_follow_the_tokenizers_word_boundaries(byte_level_tokenizer):
    """A byte-level BPE model: words by the tokenizer's word ids, punctuation its own word, no byte soup."""
    import fastig
    from fastig.display import words

    from conftest import make_byte_level_model

    text = "The component. Reagan's approach \u2014 works, caf\u00e9"
    model = make_byte_level_model("roberta", byte_level_tokenizer)
    result = fastig.Engine(model, byte_level_tokenizer).attribute(text, n_steps=4)
    document = result.documents[0]
    shown = [w.text for w in words(document)]
    assert shown == ["The", "component", ".", "Reagan", "'s", "approach", "\u2014", "works", ",", "caf\u00e9"]
    assert not any(marker in "".join(document.display_tokens) for marker in ("\u0120", "\u00e2\u0122"))
    assert sum(w.score for w in words(document)) == pytest.approx(
        sum(s for p, s in enumerate(document.token_scores.tolist()) if p not in document.special_positions), abs=1e-6)


def test_sentencepiece_pieces_show_their_own_characters_and_start_their_own_words(sentencepiece_tokenizer):
    """An XLM-RoBERTa with a SentencePiece-style tokenizer: its bare "\u2581" pieces (at the text's start their
    offsets point at the first character) show nothing, every other piece shows itself, and the token view
    gives a bare piece's score to the word it starts, never to the word before it."""
    import torch
    from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification

    import fastig
    from fastig.display import token_words, words

    from conftest import COMMON

    tokenizer = sentencepiece_tokenizer
    torch.manual_seed(0)
    model = XLMRobertaForSequenceClassification(XLMRobertaConfig(
        **{**COMMON, "vocab_size": len(tokenizer)}, max_position_embeddings=130, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)).eval()
    text = "Our caf\u00e9 \u2014 Reagan's approach works, 3.5% gains! "     # the last space: a bare piece too
    document = fastig.Engine(model, tokenizer).attribute(text, n_steps=4).documents[0]
    bare = [p for p, t in enumerate(document.tokens) if t == "\u2581"]
    last = len(document.tokens) - 2
    assert bare[0] == 1 and bare[-1] == last and len(bare) >= 4, document.tokens   # at the start, inside, at the end
    inner = range(1, len(document.tokens) - 1)
    assert [document.display_tokens[p] for p in inner] == [document.tokens[p].lstrip("\u2581") for p in inner]
    scores = document.token_scores.tolist()
    units = token_words(document)
    # the last bare piece starts no word: its score goes to the piece before it
    assert all(len({document.word_ids[p] for p in unit.positions if p != last}) == 1 for unit in units)
    assert all(unit.text == text[unit.start:unit.end] for unit in units)
    assert sum(unit.score for unit in units) == pytest.approx(sum(scores[p] for p in inner), abs=1e-6)
    assert [w.text for w in words(document)] == ["Our", "caf\u00e9", "\u2014", "Reagan's", "approach", "works,",
                                                 "3.5%", "gains!"]
    assert sum(w.score for w in words(document)) == pytest.approx(sum(scores[p] for p in inner), abs=1e-6)


def test_per_document_sums_by_token():
    from dataclasses import replace

    assert sorted(tally([replace(HAND[1], data_id="r1")]).per_document) == [(1, 0, "good", 0.25, 2, "r1"),
                                                                      (1, 0, "plot", 0.25, 1, "r1")]


def test_parquet_and_save_to_disk_folders_read_as_the_csv_does(data_files, tmp_path):
    import datasets
    import pandas as pd

    from fastig.app.dataset import read_rows
    from fastig.errors import DataError

    expected = read_rows(str(data_files / "docs.csv"), limit=5).rows
    pd.DataFrame({"text": TEXTS, "labels": LABELS}).to_parquet(tmp_path / "docs.parquet")
    assert read_rows(str(tmp_path / "docs.parquet"), limit=5).rows == expected
    datasets.DatasetDict({"test": datasets.Dataset.from_dict({"text": TEXTS, "labels": LABELS})}).save_to_disk(
        str(tmp_path / "saved"))
    assert read_rows(str(tmp_path / "saved"), split="test", limit=5).rows == expected
    with pytest.raises(DataError, match="--split 'train' is not a split"):
        read_rows(str(tmp_path / "saved"), split="train")


def test_the_default_target_is_each_documents_prediction(model_dir, data_files, tmp_path):
    assert exit_code(_args(model_dir, data_files / "docs.csv", tmp_path / "predicted", "--limit", "4")) == 0
    records = _records(tmp_path / "predicted")
    assert [r["id"] for r in records] == [0, 1, 2, 3] and all(r["target"] == r["prediction"] for r in records)


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "sigterm"])
def test_a_stopped_default_run_of_30_documents_resumes_with_its_work_kept(model_dir, tmp_path, stop):
    """Default settings (no --n-steps, no --shard-size): the first shard is written after its first
    document, so a stop however early keeps what was done; the resume does only the rest. A SIGTERM (a
    job scheduler's, a time limit's) stops it as Ctrl-C does: one line saying how to resume, exit 130 and
    the folder's lock released; after a kill -9 the next run takes the lock over and says so."""
    data = tmp_path / "docs.csv"
    with open(data, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("text",), *((make_text(10 + i, seed=100 + i),) for i in range(30))])
    out = tmp_path / "run"
    command = [sys.executable, "-m", "fastig", "dataset", "--model", model_dir, "--data", str(data), "--out", str(out)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               env=hanging_after_shards(1, tmp_path / "hang"))
    try:
        deadline = time.monotonic() + 300
        while not list((out / "shards").glob("*.jsonl")) and process.poll() is None:
            assert time.monotonic() < deadline, "no shard written in 5 minutes"
            time.sleep(0.1)
        os.kill(process.pid, stop)
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
        process.wait()
    if stop == signal.SIGTERM:
        assert process.returncode == 130, stderr[-2000:]
        assert stderr.splitlines()[-1] == ("fastig dataset: interrupted; run the same command again to continue "
                                           "where it stopped")
        assert (out / ".lock").read_text() == ""
    else:
        assert process.returncode == -signal.SIGKILL
    kept = {path.name: path.read_bytes() for path in (out / "shards").glob("*.jsonl")}
    done = sum(len(content.splitlines()) for content in kept.values())
    assert len(kept) == 1 and 1 <= done < 30
    finished = subprocess.run(command, capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert ("taking over" in finished.stderr) == (stop == signal.SIGKILL), finished.stderr[-2000:]
    assert f"{30 - done} attributed now" in finished.stdout and f"{done} from before" in finished.stdout
    assert all((out / "shards" / name).read_bytes() == content for name, content in kept.items())
    assert [r["id"] for r in _records(out)] == list(range(30))
