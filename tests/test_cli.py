"""The fastig command: outputs on success; one line on stderr and exit code 2 on bad input."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fastig.app import demo
from fastig.app.cli import main

from conftest import make_text, stop_at_group


def exit_code(argv) -> int:
    """The exit code of the command, whether main returns it or argparse exits."""
    try:
        return main(argv)
    except SystemExit as exit:
        return exit.code


@pytest.fixture(scope="module")
def model_dir(saved_model):
    return str(saved_model("longformer"))


def test_attribute_prints_and_writes_json(model_dir, tmp_path, capsys):
    out = tmp_path / "result.json"
    code = main(["attribute", "--model", model_dir, "--text", make_text(30), "--text", "good film",
                 "--n-steps", "8", "--top-k", "3", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    assert printed.count("predicted") == 2 and "delta" in printed and "top words" in printed
    saved = json.loads(out.read_text())
    assert len(saved["documents"]) == 2 and saved["n_steps"] == 8
    assert saved["documents"][1]["tokens"] == ["[CLS]", "good", "film", "[SEP]"]
    assert len(saved["documents"][0]["top"]) == 3
    # A two-word text: each word in one list only, by its score's sign, printed once.
    short = saved["documents"][1]
    assert all(t["score"] > 0 for t in short["top"]) and all(t["score"] < 0 for t in short["bottom"])
    assert sorted(t["token"] for t in short["top"] + short["bottom"]) == ["film", "good"]
    table = printed.split("document 1:")[1]
    assert table.count("good") == 1 and table.count("film") == 1


def test_a_document_from_standard_input(model_dir, tmp_path, capsys, monkeypatch):
    """`--file -` reads a document from standard input (`cat paper.txt | fastig attribute ...`), UTF-8, as
    --text gives it, a byte-order mark (as Windows tools write UTF-8) not part of it (a byte-level BPE made it
    a token, an invisible word in the ranking); with --processes it is refused, as only one process could
    read it."""
    import io

    text = make_text(12) + " caf\u00e9"
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(text.encode("utf-8-sig"))))
    for source, out in ((["--file", "-"], "a.json"), (["--text", text], "b.json")):
        assert main(["attribute", "--model", model_dir, *source, "--n-steps", "4", "--out", str(tmp_path / out)]) == 0
    from_stdin, from_text = (json.loads((tmp_path / name).read_text())["documents"][0] for name in ("a.json", "b.json"))
    assert from_stdin["text"] == text and from_stdin["token_scores"] == from_text["token_scores"]
    capsys.readouterr()
    assert exit_code(["attribute", "--model", model_dir, "--file", "-", "--processes", "2"]) == 2
    assert "--file - (standard input) with --processes" in capsys.readouterr().err


def test_a_model_with_code_of_its_own_runs_only_when_trusted(tokenizer, tmp_path, capsys, monkeypatch):
    """A classifier whose config names Python code of its own (auto_map) is refused in one line naming
    --trust-remote-code (transformers asked y/N on a terminal, else failed with its long message), and
    explained with it."""
    import transformers.dynamic_module_utils as dynamic_modules

    from conftest import make_model

    # transformers copies the model's code into a package of its own: here, not under the user's ~/.cache.
    monkeypatch.setattr(dynamic_modules, "HF_MODULES_CACHE", str(tmp_path / "modules"))
    monkeypatch.setattr(sys, "path", list(sys.path))
    folder = tmp_path / "custom"
    make_model("bert").save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "configuration_tiny.py").write_text(
        "from transformers import BertConfig\n\n\nclass TinyConfig(BertConfig):\n    model_type = 'tiny-custom-bert'\n")
    (folder / "modeling_tiny.py").write_text(
        "from transformers import BertForSequenceClassification\n\nfrom .configuration_tiny import TinyConfig\n\n\n"
        "class TinyForSequenceClassification(BertForSequenceClassification):\n    config_class = TinyConfig\n")
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="tiny-custom-bert", auto_map={
        "AutoConfig": "configuration_tiny.TinyConfig",
        "AutoModelForSequenceClassification": "modeling_tiny.TinyForSequenceClassification"})
    (folder / "config.json").write_text(json.dumps(config))
    capsys.readouterr()     # save_pretrained's bars
    command = ["attribute", "--model", str(folder), make_text(6), "--n-steps", "4"]
    assert exit_code(command) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "runs Python code of its own" in err and "--trust-remote-code" in err
    assert exit_code([*command, "--trust-remote-code"]) == 0
    assert "predicted" in capsys.readouterr().out


def test_attribute_takes_a_target_by_its_label_name(model_dir, capsys):
    assert main(["attribute", "--model", model_dir, make_text(7), "--target", "LABEL_2", "--n-steps", "4"]) == 0
    assert "attributed class LABEL_2" in capsys.readouterr().out
    # several, by name or id: those classes of every text, in that order
    assert main(["attribute", "--model", model_dir, make_text(7), make_text(9, seed=1), "--target", "LABEL_2,0",
                 "--n-steps", "4"]) == 0
    headers = [line for line in capsys.readouterr().out.splitlines() if line.startswith("document ")]
    assert [(h.split(":")[0], h.split("attributed class ")[1][:7]) for h in headers] == \
        [("document 0", "LABEL_2"), ("document 0", "LABEL_0"), ("document 1", "LABEL_2"), ("document 1", "LABEL_0")]
    assert exit_code(["attribute", "--model", model_dir, make_text(7), "--target", "nope", "--n-steps", "4"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--target 'nope' is not a class index, a label of this model (LABEL_0, LABEL_1, LABEL_2)" in err
    assert len(err.splitlines()) == 1


def test_attribute_explains_every_class_with_target_all(model_dir, tmp_path, capsys):
    out = tmp_path / "result.json"
    assert main(["attribute", "--model", model_dir, make_text(11), make_text(5, seed=1), "--target", "all",
                 "--n-steps", "6", "--out", str(out)]) == 0
    saved = json.loads(out.read_text())
    assert [d["target"] for d in saved["documents"]] == [0, 1, 2] * 2      # the saved model's three classes
    assert len({tuple(d["tokens"]) for d in saved["documents"][:3]}) == 1
    # printed under the number of their text, each line naming its class
    headers = [line for line in capsys.readouterr().out.splitlines() if line.startswith("document ")]
    assert [h.split(":")[0] for h in headers] == ["document 0"] * 3 + ["document 1"] * 3
    attributed = [h.split("attributed class ")[1].split(" |")[0] for h in headers]
    assert [a.split(" (p=")[0] for a in attributed] == ["LABEL_0", "LABEL_1", "LABEL_2"] * 2
    # each class's own probability where it is not the predicted one
    for a, d in zip(attributed, saved["documents"]):
        assert a.endswith(")") == (d["target"] != d["prediction"])
        assert a.endswith(")") <= (a.split("(p=")[-1] == f"{d['probs'][d['target']]:.3f})")
    # saved, and in the report, as documents 0 and 1 (the report counted six documents, pages 0 to 5)
    assert [d["id"] for d in saved["documents"]] == [0, 0, 0, 1, 1, 1]
    report = out.with_suffix(".report")
    pages = sorted(p.name for p in report.glob("document-*.html"))
    assert pages == [f"document-{d}-target-{t}.html" for d in (0, 1) for t in (0, 1, 2)]
    assert "<h1>Document 1: attributions toward LABEL_2" in (report / "document-1-target-2.html").read_text()
    for d in saved["documents"]:        # a class not predicted: its own probability too
        page = (report / f"document-{d['id']}-target-{d['target']}.html").read_text()
        own = f"LABEL_{d['target']} ({d['target']}) p = {d['probs'][d['target']]:.3f}"
        assert (own in page) == (d["target"] != d["prediction"])
    index = (report / "index.html").read_text()
    assert "2 documents, 6 explanations" in index and all(f'href="{page}"' in index for page in pages)
    assert main(["report", str(out), "--out", str(tmp_path / "again")]) == 0      # from result.json: the same pages
    assert sorted(p.name for p in (tmp_path / "again").glob("document-*.html")) == pages
    # without --out: where attribute wrote them; another unit in a folder of its own
    report.joinpath("index.html").unlink()
    assert main(["report", str(out)]) == 0 and (report / "index.html").is_file()
    assert main(["report", str(out), "--tokens"]) == 0
    assert sorted(p.name for p in out.with_name("result-tokens.report").glob("document-*.html")) == pages


def test_attribute_explains_each_label_a_multi_label_model_predicts(multi_label_run, tmp_path, capsys):
    """By default a multi-label model's text is explained for each label above 1/2 (the top one where none is),
    a record each in the text's order, as `fastig dataset` explains them; the top label alone left out a toxic
    comment's insult. --target names one label as on any model."""
    model_dir, texts, expected = multi_label_run
    assert exit_code(["attribute", "--model", model_dir, *texts, "--n-steps", "8", "--out",
                      str(tmp_path / "result.json")]) == 0
    records = json.loads((tmp_path / "result.json").read_text())["documents"]
    assert [(r["id"], r["target"]) for r in records] == expected
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("document ")]
    assert [int(line.split(":")[0].split()[1]) for line in printed] == [d for d, _ in expected]
    assert exit_code(["attribute", "--model", model_dir, *texts, "--n-steps", "8", "--target", "2"]) == 0
    assert capsys.readouterr().out.count("attributed class LABEL_2") == len(texts)


def test_a_bar_shows_on_a_terminal_and_in_a_log_only_for_a_long_call(model_dir, capsys, monkeypatch):
    """A call of a second left a line of bar updates before its results in every log or pipe: there the bar waits
    10 s, as in Python; on a terminal it shows from the start."""
    argv = ["attribute", "--model", model_dir, "--text", make_text(12), "--n-steps", "4"]
    assert main(argv) == 0 and "attributing" not in capsys.readouterr().err
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert main(argv) == 0 and "attributing" in capsys.readouterr().err


def test_warnings_and_errors_name_the_document_as_printed_and_where_it_came_from(model_dir, tmp_path, capsys):
    """The engine names the texts of its list (texts[2]); the command names each as it prints it, with the
    argument it came from: a cut text among several files was "texts[2]", which no file or flag was called."""
    long = tmp_path / "long.txt"
    long.write_text(make_text(1100))
    assert main(["attribute", "--model", model_dir, "good film", "--text", "bad plot", "--file", str(long),
                 "--n-steps", "2", "--top-k", "1"]) == 0
    said = capsys.readouterr()
    assert f"warning: document 2 (--file {long}): 1100 tokens, the first" in said.err and "texts[" not in said.err
    assert "document 2: 1025 tokens (77 cut)" in said.out
    assert exit_code(["attribute", "--model", model_dir, "good film", "--text", "bad", "--text", "",
                      "--n-steps", "2"]) == 2
    assert "error: document 2 (--text 2): '' holds no token" in capsys.readouterr().err


def test_attribute_reports_its_memory(model_dir, capsys):
    assert main(["attribute", "--model", model_dir, "--text", make_text(30), "--n-steps", "8",
                 "--memory-budget", "90%", "--chunk-size", "4"]) == 0
    printed = capsys.readouterr().out
    assert "up to 4 sequences per call, peak " in printed and " GB budget" in printed


def test_attribute_reads_files(model_dir, tmp_path, capsys):
    doc = tmp_path / "doc.txt"
    doc.write_text(make_text(12), encoding="utf-8")
    assert main(["attribute", "--model", model_dir, "--file", str(doc), "--n-steps", "4"]) == 0
    assert "document 0: 14 tokens" in capsys.readouterr().out


def test_a_file_name_given_as_a_text_is_explained_as_written_and_said_so(model_dir, tmp_path, capsys, monkeypatch):
    """`fastig attribute --model M paper.txt` explained the word "paper.txt" without a sign; now a warning names
    --file. A text of several words is never taken for a file name."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "paper.txt").write_text(make_text(12), encoding="utf-8")
    assert main(["attribute", "--model", model_dir, "paper.txt", "--n-steps", "4", "--out", "result.json"]) == 0
    shown = capsys.readouterr()
    assert json.loads((tmp_path / "result.json").read_text())["documents"][0]["text"] == "paper.txt"
    assert ("fastig attribute: warning: argument 1 'paper.txt' is explained as written, a text of one word, though "
            "it names a file: give --file paper.txt to explain what the file holds") in shown.err
    assert main(["attribute", "--model", model_dir, "good film", "--n-steps", "4"]) == 0
    assert "warning" not in capsys.readouterr().err


def test_attribute_takes_documents_as_arguments_in_order(model_dir, tmp_path, capsys):
    """`fastig attribute --model M "a text"` as a newcomer first types it; then --text, --file and --pair (a pair
    of texts, one document), in order."""
    doc, out = tmp_path / "doc.txt", tmp_path / "result.json"
    doc.write_text("plot actor movie", encoding="utf-8")
    assert main(["attribute", "--model", model_dir, "good film", "awful", "--text", "bad plot", "--file", str(doc),
                 "--pair", "good plot", "bad actor", "--n-steps", "4", "--out", str(out)]) == 0
    saved = json.loads(out.read_text())
    assert [d["tokens"][1:-1] for d in saved["documents"]] == [["good", "film"], ["awful"], ["bad", "plot"],
                                                                ["plot", "actor", "movie"],
                                                                ["good", "plot", "[SEP]", "bad", "actor"]]
    assert saved["documents"][4]["text"] == "good plot\n\nbad actor"
    assert saved["source"]["inputs"] == f"text, text, --text, {doc}, --pair"


def test_attribute_prints_words_or_with_tokens_the_pieces(tmp_path, byte_level_tokenizer, capsys):
    """On a byte-level BPE the printed lists hold the text's words (the report's units), not "Ġ" pieces of them;
    --tokens prints the pieces."""
    from conftest import make_byte_level_model

    folder = tmp_path / "roberta-bpe"
    make_byte_level_model("roberta", byte_level_tokenizer).save_pretrained(folder)
    byte_level_tokenizer.save_pretrained(folder)
    # two words it never saw; one longer than a column, shown cut with an ellipsis
    text = "Neural networks relearn unworkably \u2014 a caf\u00e9, a r\u00e9sum\u00e9 representationally."
    words = {"Neural", "networks", "relearn", "unworkably", "\u2014", "a", "caf\u00e9", ",", "r\u00e9sum\u00e9",
             "representationa\u2026", "."}

    def listed(*options):
        assert main(["attribute", "--model", str(folder), text, "--n-steps", "4", "--top-k", "30", *options]) == 0
        table = capsys.readouterr().out.splitlines()[2:-1]           # below the header, above the run line
        return {cell[:16].strip() for row in table for cell in (row[2:35], row[35:]) if cell.strip()}
    assert listed() == words
    pieces = listed("--tokens")
    assert pieces - words and all(piece.rstrip("\u2026") in text for piece in pieces)   # pieces, as the text has them


def test_a_stopped_attribute_says_its_documents_are_not_kept(model_dir, tmp_path, monkeypatch, capsys):
    """Ctrl-C or a SIGTERM amid the work: one line naming the resumable way, exit 130, no partial --out."""
    import fastig

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(fastig.Engine, "attribute", stopped)
    out = tmp_path / "r.json"
    assert main(["attribute", "--model", model_dir, "--text", "good film", "--out", str(out)]) == 130
    assert capsys.readouterr().err.splitlines() == [
        "fastig attribute: interrupted; its documents are not kept (`fastig dataset` keeps each finished one and "
        "resumes)"]
    assert not out.exists()


def test_a_stopped_attribute_keeps_the_documents_done_beside_its_out(model_dir, tmp_path, monkeypatch, capsys):
    """Ctrl-C after some documents were done: --out stays absent (whole or absent), the documents done go to
    OUT.partial.json, marked, which `fastig report` reads; the closing line says where. They were lost before.
    A whole run later removes the stopped run's file, so no stale documents sit beside its result."""
    stop_at_group(monkeypatch)
    out = tmp_path / "r.json"
    texts = [make_text(40, seed=1), make_text(6, seed=2), make_text(7, seed=3)]     # two groups by length
    assert main(["attribute", "--model", model_dir, *texts, "--n-steps", "4", "--out", str(out)]) == 130
    partial = tmp_path / "r.partial.json"
    err = capsys.readouterr().err.splitlines()
    assert err[-1] == (f"fastig attribute: interrupted; the 1 of 3 documents done are printed above and in {partial} "
                       "(fastig report reads it)")
    saved = json.loads(partial.read_text())
    assert not out.exists() and saved["interrupted"] == "1 of 3 documents done"
    assert saved["stopped_by"] == "an interrupt (Ctrl-C or SIGTERM)"
    assert [d["id"] for d in saved["documents"]] == [0] and saved["documents"][0]["text"] == texts[0]
    assert main(["report", str(partial), "--out", str(tmp_path / "report")]) == 0
    monkeypatch.undo()      # the whole run again: its result, and no stopped run's documents beside it
    assert main(["attribute", "--model", model_dir, *texts, "--n-steps", "4", "--out", str(out)]) == 0
    assert out.exists() and not partial.exists()


def test_a_stopped_attribute_prints_the_documents_done(model_dir, monkeypatch, capsys):
    """Without --out, the documents finished before Ctrl-C are printed as a whole run prints them, numbered
    by their place among the texts, and the closing line says so: they were computed and then lost."""
    texts = [make_text(40, seed=1), make_text(6, seed=2), make_text(7, seed=3)]     # two groups by length
    assert main(["attribute", "--model", model_dir, *texts, "--n-steps", "4"]) == 0
    whole = capsys.readouterr().out.split("document 1:")[0]
    stop_at_group(monkeypatch)
    assert main(["attribute", "--model", model_dir, *texts, "--n-steps", "4"]) == 130
    printed = capsys.readouterr()
    assert printed.err.splitlines()[-1] == ("fastig attribute: interrupted; the 1 of 3 documents done are printed "
                                            "above (`fastig dataset` keeps each finished one and resumes)")
    assert printed.out.startswith("document 0: ") and "document 1:" not in printed.out
    assert printed.out.splitlines()[:4] == whole.splitlines()[:4]


def test_an_attribute_stopped_by_an_error_keeps_the_documents_done(model_dir, monkeypatch, capsys, tmp_path):
    """An error after some documents (memory running out, the model failing on one text) prints them and
    writes them beside --out, as an interrupt does; the error is said as before, with where they are."""
    import fastig

    texts, out = [make_text(40, seed=1), make_text(6, seed=2), make_text(7, seed=3)], tmp_path / "r.json"
    partial = tmp_path / "r.partial.json"
    calls = stop_at_group(monkeypatch, error=RuntimeError("DefaultCPUAllocator: not enough memory"))
    with pytest.raises(RuntimeError, match="not enough memory") as failed:
        main(["attribute", "--model", model_dir, *texts, "--n-steps", "4", "--out", str(out)])
    assert capsys.readouterr().out.startswith("document 0: ") and not out.exists()
    assert failed.value.__notes__[-1] == (f"fastig attribute: the 1 of 3 documents done are printed above and in "
                                          f"{partial} (fastig report reads it)")
    saved = json.loads(partial.read_text())
    assert saved["interrupted"] == "1 of 3 documents done"
    assert saved["stopped_by"] == "RuntimeError: DefaultCPUAllocator: not enough memory"
    calls.clear()
    stop_at_group(monkeypatch, error=fastig.MemoryBudgetError("memory_budget='1GB' is too small"))
    assert main(["attribute", "--model", model_dir, *texts, "--n-steps", "4"]) == 2      # said in one line
    assert capsys.readouterr().err.splitlines()[-1] == (
        "fastig attribute: error: memory_budget='1GB' is too small; the 1 of 3 documents done are printed above "
        "(`fastig dataset` keeps each finished one and resumes)")


def test_printed_columns_line_up_in_a_terminal_whatever_the_script():
    """Each row's scores start at the same terminal column, Chinese words (two columns a character) and
    over-long ones (cut, ending in "…") among them: counted as one column, they pushed the scores out of line."""
    import io
    import unicodedata

    from fastig.app.text import print_columns

    def columns(text):
        return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)

    printed = io.StringIO()
    print_columns([("精彩", 0.5), ("works", 0.25), ("非常好看非常好看非常好看", 0.125), ("a" * 30, 0.0625)],
                  [("无聊", -0.5), ("dull", -0.25)], 16, printed)
    rows = printed.getvalue().splitlines()
    starts = [columns(row[:re.search(r"[+-]0\.", row).start()]) for row in rows]
    assert len(set(starts)) == 1, rows
    seconds = [columns(row[:[m.start() for m in re.finditer(r"[+-]0\.", row)][1]]) for row in rows[:2]]
    assert len(set(seconds)) == 1, rows
    assert "…" in rows[2] and "…" in rows[3]


def test_check_passes_on_a_tiny_longformer(model_dir, capsys):
    code = main(["check", "--model", model_dir, "--text", make_text(40), "--n-steps", "10",
                 "--method", "riemann_middle", "--internal-batch-size", "3"])
    printed = capsys.readouterr().out
    assert code == 0 and "PASS" in printed and "rel L2" in printed
    # what was compared, first: a user read timings without knowing the rule, steps or precision behind them
    assert printed.startswith("fastig against Captum: 1 explanation of 1 document (42 tokens), riemann_middle 10 "
                              "steps, fastig in fp32\n")
    assert main(["check", "--model", model_dir, "--text", make_text(40), "--text", make_text(7), "--n-steps", "4",
                 "--target", "all"]) == 0
    assert capsys.readouterr().out.startswith("fastig against Captum: 6 explanations of 2 documents (51 tokens), "
                                              "gausslegendre 4 steps")


@pytest.mark.parametrize("args, fragment", [
    (["--text", "good", "--target", "7"], "target=7 is out of range"),
    (["--text", ""], "holds no token"),
    ([], "give at least one document: TEXT, --text, --file or --pair"),
    (["--file", "/nonexistent/doc.txt"], "--file '/nonexistent/doc.txt'"),
    (["--text", "good", "--n-steps", "0"], "n_steps"),
    (["--text", "good", "--baseline", "blank"], "baseline='blank' is unknown"),
    (["--text", "good", "--layer", "no.such.layer"], "layer='no.such.layer'"),
    (["--text", "good", "--method", "simpson"], "invalid choice: 'simpson'"),
    (["--text", "good", "--target", "first"], "--target 'first' is not a class index, a label of this model"),
    (["--text", "good", "--memory-budget", "lots"], "memory_budget='lots' is not a budget"),
    (["--text", "good", "--memory-budget", "1MB"], "memory_budget='1MB' is below the"),
    (["--text", "good", "--chunk-size", "0"], "chunk_size=0 must be a positive integer"),
])
def test_bad_input_is_one_line_and_exit_2(model_dir, capsys, args, fragment):
    assert exit_code(["attribute", "--model", model_dir, *args]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and fragment in err, err


@pytest.mark.parametrize("command, flag, value, least", [
    ("attribute", "--top-k", "-1", 0), ("dataset", "--top-k", "-3", 0), ("dataset", "--limit", "0", 1),
    ("aggregate", "--top", "-1", 0), ("demo", "--documents", "0", 1), ("demo", "--top-k", "-2", 0),
    ("check", "--internal-batch-size", "0", 1)])
def test_a_count_below_what_it_can_be_is_refused_by_name(model_dir, tmp_path, capsys, command, flag, value, least):
    """--top-k -1 printed every word (a negative k never filled a list) and Captum's internal_batch_size 0 failed
    inside it: counts are refused when read, naming the option and what it takes."""
    args = {"attribute": ["--model", model_dir, "good"], "dataset": ["--model", model_dir, "--data", "x.csv", "--out",
                                                                      str(tmp_path / "out")],
            "aggregate": [str(tmp_path)], "demo": [], "check": ["--model", model_dir, "good"]}[command]
    assert exit_code([command, *args, flag, value]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(f"argument {flag}: {value}: give an integer of {least} or more") and len(err.splitlines()) == 1


def test_check_refuses_what_captum_cannot_compare_before_any_work(model_dir, capsys, monkeypatch):
    import fastig

    monkeypatch.setattr(fastig.Engine, "attribute", lambda *args, **kwargs: pytest.fail("fastig ran first"))
    assert exit_code(["check", "--model", model_dir, "good film", "--baseline", "zeros"]) == 2
    assert "--baseline zeros: Captum's LayerIntegratedGradients takes baselines as ids" in capsys.readouterr().err


def test_a_missing_model_folder_is_one_line_and_exit_2(tmp_path, capsys):
    """A path that cannot be a hub name is said to be a missing folder, not a malformed repo id."""
    assert exit_code(["attribute", "--model", str(tmp_path / "missing"), "--text", "good"]) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [f"fastig attribute: error: model '{tmp_path / 'missing'}': no such folder (a hub "
                                "name is NAME or OWNER/NAME)"]


@pytest.mark.parametrize("command, unreachable", [
    (["attribute", "--model", "someone/no-such-model", "good"], "AutoModelForSequenceClassification"),
    (["attribute", "--model", "{model}", "--tokenizer", "someone/no-such-tokenizer", "good"], "AutoTokenizer"),
    (["dataset", "--model", "{model}", "--data", "someone/no-such-data", "--out", "{out}"], "load_dataset")],
    ids=["model", "tokenizer", "data"])
def test_an_unreachable_hub_is_one_line_and_exit_2(command, unreachable, model_dir, tmp_path, monkeypatch, capsys):
    """The hub client logs each failed request ("... thrown while requesting HEAD ...") before the error that
    follows: fastig's one line is all that shows. Offline, so the loader is replaced by one that fails as the
    client does without a network."""
    import logging

    import datasets
    import transformers

    def fail(*args, **kwargs):
        logging.getLogger("huggingface_hub.utils._http").warning(
            "'[Errno -2] Name or service not known' thrown while requesting HEAD https://huggingface.co/...")
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")
    if unreachable == "load_dataset":
        monkeypatch.setattr(datasets, "load_dataset", fail)
    else:
        monkeypatch.setattr(getattr(transformers, unreachable), "from_pretrained", fail)
    logged = []          # what reaches the hub client's handlers (they hold the stderr of when they were made)
    handler = logging.Handler()
    handler.emit = lambda record: logged.append(record.getMessage())
    logging.getLogger("huggingface_hub").addHandler(handler)
    try:
        assert exit_code([part.format(model=model_dir, out=tmp_path / "run") for part in command]) == 2
    finally:
        logging.getLogger("huggingface_hub").removeHandler(handler)
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "error:" in err and not logged, (err, logged)


def test_the_installed_command_runs_the_cli():
    import shutil

    command = shutil.which("fastig", path=str(Path(sys.executable).parent))
    assert command, "no fastig command next to this Python: pip install -e . installs it"
    done = subprocess.run([command, "attribute", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "--accuracy" in done.stdout


def test_python_dash_m_runs_the_cli():
    done = subprocess.run([sys.executable, "-m", "fastig", "attribute", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "--n-steps" in done.stdout


def test_demo_fine_tunes_once_then_reuses_the_cache(tmp_path, monkeypatch, capsys):
    # A small recipe keeps the test short; the real one trains on 3000 reviews.
    monkeypatch.setitem(demo.RECIPE, "train", 64)
    monkeypatch.setitem(demo.RECIPE, "held_out", 16)
    monkeypatch.setenv("FASTIG_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "demo"
    from transformers.utils import logging as hf_logging

    settings = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    assert main(["demo", "--out", str(out), "--n-steps", "4", "--documents", "2"]) == 0
    assert (hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()) == settings   # as it found them
    printed = capsys.readouterr().out
    assert "held-out accuracy" in printed and "Captum LayerIntegratedGradients" in printed
    assert "(medians of 3 runs each, alternated)" in printed
    assert {p.name for p in out.iterdir()} == {"result.json", "documents.csv", "token_scores.csv", "report"}
    assert str(out / "report" / "index.html") in printed
    assert {p.name for p in (out / "report").iterdir()} == {"index.html", "document-0.html", "document-1.html"}
    assert len(json.loads((out / "result.json").read_text())["documents"]) == 2

    monkeypatch.setattr(demo, "fine_tune", lambda *a, **k: pytest.fail("the cached model was not reused"))
    assert main(["demo", "--out", str(out), "--n-steps", "4", "--documents", "1"]) == 0



def test_the_version_names_fastig_and_the_packages_its_numbers_depend_on(capsys, monkeypatch):
    """A bug report or a comparison of two runs needs the versions; `fastig --version` was an error. One line,
    however narrow the terminal."""
    import captum
    import torch
    import transformers
    import triton

    import fastig

    monkeypatch.setenv("COLUMNS", "40")
    assert exit_code(["--version"]) == 0
    line = capsys.readouterr().out
    assert line == (f"fastig {fastig.__version__} (torch {torch.__version__}, transformers {transformers.__version__}"
                    f", captum {captum.__version__}, triton {triton.__version__})\n")


def test_help_version_and_a_mistyped_flag_answer_without_importing_torch():
    """`fastig --help` took 3.6 s on the 2-core EPYC, 2.6 of them importing torch, and a mistyped flag as long to
    be refused: the parser is built from plain values (fastig.options), the core imported by the commands."""
    code = ("import sys\nfrom fastig.app.cli import main\n"
            "for argv in (['--help'], ['--version'], ['dataset', '--help'], ['attribute', '--model', 'm', '--n-stepz', '5', 'a']):\n"
            "    try:\n        main(argv)\n    except SystemExit as stop:\n        print('exit', stop.code)\n"
            "print('torch imported:', 'torch' in sys.modules)\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.stdout.splitlines()[-1] == "torch imported: False", run.stdout + run.stderr
    assert run.stdout.count("exit 0") == 3 and "exit 2" in run.stdout
    assert "unrecognized arguments: --n-stepz" in run.stderr


def test_fastig_alone_lists_the_commands_and_where_to_start(capsys):
    """`fastig` with nothing else said "the following arguments are required: command", naming none."""
    assert exit_code([]) == 2
    shown = capsys.readouterr().err
    assert all(command in shown for command in ("attribute", "check", "demo", "dataset", "aggregate", "report",
                                                "bench"))
    assert "Start with `fastig demo`" in shown and "`fastig COMMAND --help`" in shown

