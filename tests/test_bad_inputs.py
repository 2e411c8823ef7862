"""Every bad input and fault a user can cause: one line on stderr, exit 2, nothing already written lost.

A table of commands, each with the files it needs made in a fresh folder; then the API's own
refusals, and the faults that come after the work (a full disk) or inside it (a model giving nan).
"""

import errno
import json
import shutil

import pytest
import torch

import fastig

from conftest import assert_close, make_model, make_text, stop_at_group
from test_cli import exit_code


@pytest.fixture(scope="module")
def model_dir(saved_model):
    return saved_model("bert")


def _model_folder(tmp_path, tokenizer, family="bert", change=None, name="model"):
    folder = tmp_path / name
    model = make_model(family)
    if change:
        change(model)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _corrupt_weights(folder):
    (folder / "model.safetensors").write_bytes(b"\x00" * 64)


def _pickled_weights(folder):
    """A torch.save file holding a class torch's weights_only loading refuses."""
    (folder / "model.safetensors").unlink()
    torch.save({"weights": fastig.Engine}, folder / "pytorch_model.bin")


def _base_model(folder, tokenizer):
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(vocab_size=200, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def _small_vocabulary(model):
    model.resize_token_embeddings(50)


def _one_label(folder, tokenizer):
    from transformers import BertConfig, BertForSequenceClassification

    BertForSequenceClassification(BertConfig(vocab_size=200, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                             intermediate_size=64, num_labels=1)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def _lines(err: str) -> list[str]:
    """fastig's own lines on stderr (progress bars aside)."""
    return [line for line in err.replace("\r", "\n").splitlines() if line.startswith("fastig ")]


def _a_record() -> dict:
    """A sound record as result.json holds it."""
    from conftest import record

    return record(tokens=["[CLS]", "good", "[SEP]"], token_scores=[0.0, 1.0, 0.0], special_positions=[0, 2]).to_json()


def _write(path, content) -> None:
    """Write a file for a case (None, so that cases chain their steps with `or`)."""
    (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)


# (name, setup(tmp_path, tokenizer, model_dir) -> argv, fragment of the one line)
CASES = [
    ("file not UTF-8", lambda t, k, m: _write(t / "latin1.txt", "caf\xe9 film".encode("latin-1"))
     or ["attribute", "--model", str(m), "--file", str(t / "latin1.txt")], "is not UTF-8 text"),
    ("binary file", lambda t, k, m: _write(t / "blob.bin", b"\x7fELF\x00\x01\x02")
     or ["attribute", "--model", str(m), "--file", str(t / "blob.bin")], "binary"),
    ("out under a file", lambda t, k, m: _write(t / "plain", "x")
     or ["attribute", "--model", str(m), "--text", "good film", "--out", str(t / "plain" / "r.json")], "cannot take files"),
    ("out is a folder", lambda t, k, m: (t / "folder").mkdir()
     or ["attribute", "--model", str(m), "--text", "good film", "--out", str(t / "folder")], "is a folder"),
    ("n_steps too large", lambda t, k, m: ["attribute", "--model", str(m), "--text", "good", "--n-steps", "100000"],
     "n_steps=100000 is too large"),
    ("no CUDA", lambda t, k, m: ["attribute", "--model", str(m), "--text", "good", "--device", "cuda"],
     "no CUDA device"),
    ("not a device", lambda t, k, m: ["attribute", "--model", str(m), "--text", "good", "--device", "gpu7"],
     "is not a device"),
    ("max_length past positions", lambda t, k, m: ["attribute", "--model", str(m), "--text", "good", "--max-length",
                                                   "100000"], "max_length=100000 must be an integer from 1 to 510"),
    ("corrupt weights", lambda t, k, m: _corrupt_weights(_model_folder(t, k))
     or ["attribute", "--model", str(t / "model"), "--text", "good"], "cannot load a sequence classifier"),
    ("pickle refused", lambda t, k, m: _pickled_weights(_model_folder(t, k))
     or ["attribute", "--model", str(t / "model"), "--text", "good"], "cannot load a sequence classifier"),
    ("tokenizer folder missing", lambda t, k, m: ["attribute", "--model", str(m), "--tokenizer", "./no-tokenizer",
                                                  "--text", "good"], "tokenizer './no-tokenizer': no such folder"),
    ("base model", lambda t, k, m: _base_model(t / "base", k)
     or ["attribute", "--model", str(t / "base"), "--text", "good"], "not a trained sequence classifier"),
    ("tokenizer larger than the vocabulary", lambda t, k, m: _model_folder(t, k, change=_small_vocabulary)
     and ["attribute", "--model", str(t / "model"), "--text", "good"], "tokenizer has 117 tokens"),
    ("probs of one label", lambda t, k, m: _one_label(t / "one", k)
     or ["attribute", "--model", str(t / "one"), "--text", "good", "--output", "probs"], "model with one label"),
    ("report of a wrongly typed result", lambda t, k, m: _write(t / "r.json", json.dumps(
        {"documents": [{"tokens": "not a list", "token_scores": [1.0]}]}))
     or ["report", str(t / "r.json"), "--out", str(t / "report")], "'tokens' must be a list of strings"),
    ("report of a result with an id not text or a number", lambda t, k, m: _write(t / "r.json", json.dumps(
        {"documents": [{**_a_record(), "data_id": [7]}]}))
     or ["report", str(t / "r.json"), "--out", str(t / "report")], "'data_id' must be int or str or null"),
    ("report of a run folder edited by hand", lambda t, k, m: (t / "run").mkdir()
     or _write(t / "run" / "manifest.json", "{}") or _write(t / "run" / "documents.jsonl", '{"id": 1}\n')
     or ["report", str(t / "run"), "--out", str(t / "report")], "cannot be read"),
    ("aggregate of a run whose manifest is a list", lambda t, k, m: (t / "run").mkdir()
     or _write(t / "run" / "manifest.json", "[]") or ["aggregate", str(t / "run"), "--unfinished"],
     "manifest.json is not a manifest of settings"),
    ("data not UTF-8", lambda t, k, m: _write(t / "d.csv", b"text\ncaf\xe9\n")
     or ["dataset", "--model", str(m), "--data", str(t / "d.csv"), "--out", str(t / "out")], "cannot read it as csv"),
    ("data out under a file", lambda t, k, m: _write(t / "d.csv", "text\ngood film\n") or _write(t / "plain", "x")
     or ["dataset", "--model", str(m), "--data", str(t / "d.csv"), "--out", str(t / "plain" / "run")], "cannot take files"),
    ("odd labels", lambda t, k, m: _write(t / "d.csv", "text,labels\ngood film,1.5\n")
     or ["dataset", "--model", str(m), "--data", str(t / "d.csv"), "--out", str(t / "out")], "label 1.5 is not a class id"),
    ("a manifest that is not one", lambda t, k, m: _write(t / "d.csv", "text\ngood film\n") or (t / "out").mkdir()
     or _write(t / "out" / "manifest.json", "[]")
     or ["dataset", "--model", str(m), "--data", str(t / "d.csv"), "--out", str(t / "out")], "manifest.json cannot be read"),
]


@pytest.mark.parametrize("name, setup, fragment", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_exit_2(tmp_path, tokenizer, model_dir, capsys, name, setup, fragment):
    argv = setup(tmp_path, tokenizer, model_dir)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    capsys.readouterr()                         # what the setup printed
    assert exit_code(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(_lines(err)) == 1 and fragment in err and "Traceback" not in err, err
    for path, content in before.items():        # nothing that was there is lost or changed
        assert path.read_bytes() == content, path


@pytest.mark.parametrize("ids, fragment", [
    (torch.tensor([[2, 5, 999, 3]]), "vocabulary holds ids 0 to 116"),
    (torch.tensor([[2, -1, 3]]), "from -1 to 3"),
    (torch.zeros(0, 4, dtype=torch.long), "B >= 1"),
])
def test_bad_ids_are_refused(models, tokenizer, ids, fragment):
    with pytest.raises(fastig.InputError, match=fragment):
        fastig.Engine(models("bert"), tokenizer).attribute(ids, n_steps=4)


@pytest.mark.parametrize("target", ["10", True, 1.7, torch.tensor(1.0), [0, "1"]])
def test_targets_that_are_not_class_indices_are_refused(models, tokenizer, target):
    texts = ["good film", "bad plot"] if isinstance(target, list) else "good film"
    with pytest.raises(fastig.TargetError, match="is not a class index"):
        fastig.Engine(models("bert"), tokenizer).attribute(texts, target=target, n_steps=4)


@pytest.mark.parametrize("max_length", [2.5, 0, True, 10**6])
def test_bad_max_length_is_refused(models, tokenizer, max_length):
    with pytest.raises(fastig.InputError, match="max_length="):
        fastig.Engine(models("bert"), tokenizer).attribute("good film", max_length=max_length, n_steps=4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_half_precision_checkpoint_loads_in_fp32_and_a_half_model_is_refused(tokenizer, tmp_path, capsys, dtype):
    """transformers 5 loads a checkpoint in the dtype it was saved in: a float16 one failed in the first model
    call with torch's dtype mismatch. load_classifier (and so the CLI) loads float32, the results those of
    the weights as saved; a half model handed to Engine is refused at once, naming model.float()."""
    make_model("electra").to(dtype).save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    model, _ = fastig.load_classifier(str(tmp_path / "model"))
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    texts = [make_text(6, 1), make_text(6, 2)]
    expected = fastig.Engine(make_model("electra").to(dtype).float(), tokenizer).attribute(texts, n_steps=4)
    got = fastig.Engine(model, tokenizer).attribute(texts, n_steps=4)
    assert_close(got.attributions, expected.attributions, rtol=1e-5, atol=1e-6, what="attributions")
    assert exit_code(["attribute", "--model", str(tmp_path / "model"), "--n-steps", "4", texts[0]]) == 0
    capsys.readouterr()
    with pytest.raises(fastig.ModelLoadError, match=rf"weights are {str(dtype)[6:]}: .*give model.float\(\), "
                                                    r"or load it with from_pretrained\(\.\.\., dtype=torch.float32\)"):
        fastig.Engine(make_model("electra").to(dtype), tokenizer)


@pytest.mark.parametrize("device, fragment", [("cuda", "device='cuda': this machine has no CUDA device"),
                                              ("cuda:1", "no CUDA device; use device='cpu'"),
                                              ("gpu", "device='gpu' is not a device: give cpu, cuda or cuda:N")])
def test_a_device_this_machine_lacks_is_refused_in_python_too(models, tokenizer, monkeypatch, device, fragment):
    """Engine(device=...) said only torch's "Torch not compiled with CUDA enabled" (an AssertionError); it now
    says what the command line says, before the model is moved."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(fastig.InputError, match=fragment):
        fastig.Engine(models("bert"), tokenizer, device=device)


def test_truncation_is_said_and_recorded(models, tokenizer):
    with pytest.warns(fastig.TruncationWarning, match="the first 5 kept and 7 dropped"):
        result = fastig.Engine(models("bert"), tokenizer).attribute(make_text(12), max_length=5, n_steps=4)
    assert result.documents[0].truncated_tokens == 7 and len(result.tokens[0]) == 7


def test_texts_cut_in_one_call_are_said_in_one_warning(models, tokenizer):
    """A warning a text made a data set of long reviews print thousands of lines: the texts of a call that
    were cut are said once, with their count and the first three; each record keeps its own count."""
    texts = [make_text(12, 1), make_text(3, 2), make_text(9, 3), make_text(14, 4), make_text(8, 5), make_text(7, 6)]
    with pytest.warns(fastig.TruncationWarning) as said:
        result = fastig.Engine(models("bert"), tokenizer).attribute(texts, max_length=6, n_steps=4)
    assert len(said) == 1 and str(said[0].message).startswith("5 of 6 texts were cut")
    assert "texts[0]: 12 tokens" in str(said[0].message) and str(said[0].message).endswith("; and 2 more")
    assert said[0].filename == __file__        # said at the caller's line
    assert [d.truncated_tokens for d in result.documents] == [6, 0, 3, 8, 2, 1]
    with pytest.warns(fastig.TruncationWarning) as said:
        fastig.Engine(models("bert"), tokenizer).documents(texts, max_length=6)
    assert said[0].filename == __file__        # Engine.documents too


def test_truncation_warning_is_one_line_on_the_command_line(model_dir, capsys):
    """Said once on standard error, and the document's line counts what was cut (a run's many documents
    scroll the warning away)."""
    assert exit_code(["attribute", "--model", str(model_dir), "--text", make_text(12), "--max-length", "5",
                      "--n-steps", "4"]) == 0
    printed = capsys.readouterr()
    err = [line for line in printed.err.splitlines() if "warning" in line]
    assert len(err) == 1
    assert "fastig attribute: warning: document 0 (--text 1): 12 tokens, the first 5 kept and 7 dropped" in err[0]
    assert "document 0: 7 tokens (7 cut) | " in printed.out


def _nan_classifier(model):
    with torch.no_grad():
        model.classifier.bias.fill_(float("nan"))


def test_a_model_giving_nan_is_an_error_naming_the_documents(models, tokenizer, tmp_path, capsys, monkeypatch):
    model = make_model("bert")
    _nan_classifier(model)
    with pytest.raises(fastig.NonFiniteError, match=r"documents \[0, 1\]") as info:
        fastig.Engine(model, tokenizer).attribute(["good film", "bad plot"], n_steps=4)
    assert info.value.documents == [0, 1] and info.value.result is None      # no nan is ever a result
    bad_broken = make_model("bert")     # only the texts holding "bad" broken: the others are the error's result
    with torch.no_grad():
        bad_broken.get_input_embeddings().weight[tokenizer.convert_tokens_to_ids("bad")] = float("nan")
    texts = ["good film", "bad plot", "great acting", "a bad, bad day"]
    with pytest.raises(fastig.NonFiniteError, match=r"documents \[1, 3\]") as info:
        fastig.Engine(bad_broken, tokenizer).attribute(texts, n_steps=4, target="all")
    kept = info.value.result
    assert [record.id for record in kept.documents] == [0, 0, 0, 2, 2, 2]      # every class of each whole text
    assert all(torch.isfinite(a).all() for a in kept.attributions) and kept.documents[3].text == "great acting"
    stop_at_group(monkeypatch)      # an interrupt's result holds no nan either (a new engine: one text a group)
    with pytest.raises(fastig.Interrupted, match="0 of 2 documents") as stop:
        fastig.Engine(model, tokenizer).attribute(["good film", "bad plot"], n_steps=4)
    assert stop.value.result is None
    monkeypatch.undo()
    folder = _model_folder(tmp_path, tokenizer, change=_nan_classifier)
    out = tmp_path / "r.json"
    assert exit_code(["attribute", "--model", str(folder), "--text", "good film", "--out", str(out)]) == 2
    assert "not finite" in capsys.readouterr().err and not out.exists()


def test_attribute_keeps_the_documents_that_are_finite(tokenizer, tmp_path, capsys):
    """A text whose output is nan (a word's embedding broken) is named in the error; the other texts' results
    are printed and kept beside --out, where all were lost with the error before."""
    bad = tokenizer.convert_tokens_to_ids("bad")

    def break_bad(model):
        with torch.no_grad():
            model.get_input_embeddings().weight[bad] = float("nan")

    folder, out = _model_folder(tmp_path, tokenizer, change=break_bad), tmp_path / "r.json"
    texts = ["good film", "bad plot", "great acting"]
    assert exit_code(["attribute", "--model", str(folder), *texts, "--n-steps", "4", "--out", str(out)]) == 2
    printed = capsys.readouterr()
    assert [line.split(":")[0] for line in printed.out.splitlines() if line.startswith("document")] == [
        "document 0", "document 2"]
    assert "documents [1]: the model's output or its gradient is not finite" in printed.err
    assert printed.err.strip().endswith(f"the 2 of 3 documents done are printed above and in "
                                        f"{tmp_path / 'r.partial.json'} (fastig report reads it)")
    kept = json.loads((tmp_path / "r.partial.json").read_text())
    assert [d["text"] for d in kept["documents"]] == ["good film", "great acting"] and not out.exists()


def test_a_dataset_run_puts_nan_documents_in_skipped_csv(tmp_path, tokenizer):
    folder = _model_folder(tmp_path, tokenizer, change=_nan_classifier)
    (tmp_path / "d.csv").write_text("text\ngood film\nbad plot\n")
    assert exit_code(["dataset", "--model", str(folder), "--data", str(tmp_path / "d.csv"), "--out",
                      str(tmp_path / "run"), "--n-steps", "4"]) == 0
    assert (tmp_path / "run" / "documents.jsonl").read_text() == ""
    skipped = (tmp_path / "run" / "skipped.csv").read_text().splitlines()
    assert skipped[1:] == ["0,the model's output or gradient is not finite (nan or inf)",
                           "1,the model's output or gradient is not finite (nan or inf)"]


def test_a_numeric_text_column_is_text(tmp_path, model_dir):
    (tmp_path / "d.csv").write_text("text,labels\n12345,0\n3.5,1\n")
    assert exit_code(["dataset", "--model", str(model_dir), "--data", str(tmp_path / "d.csv"), "--out",
                      str(tmp_path / "run"), "--n-steps", "4"]) == 0
    records = [json.loads(line) for line in (tmp_path / "run" / "documents.jsonl").read_text().splitlines()]
    assert [r["id"] for r in records] == [0, 1]


def test_a_full_disk_after_the_work_keeps_the_result(model_dir, tmp_path, capsys, monkeypatch):
    from fastig.app import files

    def full(path, text):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(files, "write_atomically", full)
    assert exit_code(["attribute", "--model", str(model_dir), "--text", "good film", "--n-steps", "4",
                      "--out", str(tmp_path / "r.json")]) == 2
    (err,) = _lines(capsys.readouterr().err)
    assert "No space left on device" in err and "the result is kept in" in err
    kept = err.split("the result is kept in ")[1].strip()
    saved = json.loads(open(kept).read())
    assert saved["documents"][0]["tokens"] == ["[CLS]", "good", "film", "[SEP]"]


def test_strict_json_never_writes_nan(tmp_path):
    from fastig.app.files import to_json

    with pytest.raises(ValueError):
        to_json({"delta": float("nan")})


def test_the_lock_refuses_a_second_run_and_takes_over_a_dead_ones(tmp_path, model_dir, capsys):
    from fastig.app.files import RunLock

    (tmp_path / "d.csv").write_text("text\ngood film\n")
    argv = ["dataset", "--model", str(model_dir), "--data", str(tmp_path / "d.csv"), "--out", str(tmp_path / "run"),
            "--n-steps", "4"]
    (tmp_path / "run").mkdir()
    with RunLock(tmp_path / "run"):                 # another run holds the folder
        assert exit_code(argv) == 2
        assert "is in use by another fastig run (process" in capsys.readouterr().err
    (tmp_path / "run" / ".lock").write_text("process 999999 on elsewhere since then: fastig dataset\n")
    assert exit_code(argv) == 0                     # the lock file of a run that died: taken over
    assert "taking over" in capsys.readouterr().err and "process 999999" not in (tmp_path / "run" / ".lock").read_text()


def test_a_page_name_stays_in_the_report_folder():
    from fastig.app.report import page_name

    from conftest import record

    assert page_name(record(id=7, tokens=["a", "b"])) == "document-7.html"
    name = page_name(record(id="../../etc/x<script>", tokens=["a", "b"]))
    assert "/" not in name and "<" not in name and name.startswith("document-")
    assert shutil.os.path.basename(name) == name
