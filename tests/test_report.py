"""HTML reports, rendered by a real browser (headless Chromium): they show what they claim, and run nothing."""

import base64
import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from fastig.app.report import document_page, index_page, integrand_svg, write_report
from fastig.display import color

from conftest import record
from test_cli import exit_code

BROWSERS = ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome")
BROWSER = next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)

ATTACK = "<script>alert(1)</script>"


def _record(i: int, n_tokens: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    tokens = ["[CLS]"] + [f"w{j}" for j in range(n_tokens - 2)] + ["[SEP]"]
    scores = rng.uniform(-1, 1, n_tokens)
    scores /= np.linalg.norm(scores)
    return record(id=i, label=i % 2, prediction=1, probs=[0.2, 0.8], target=i % 2, delta=1e-4, output_at_input=0.8,
                  output_at_baseline=0.3, tokens=tokens, token_scores=scores.tolist(),
                  special_positions=[0, n_tokens - 1], alphas=[0.1 * k for k in range(8)],
                  integrand=rng.normal(size=8).tolist())


def _browser(*args) -> subprocess.CompletedProcess:
    if BROWSER is None:
        pytest.fail("no headless Chromium: .ci/run installs chromium-headless-shell from the Debian packages")
    return subprocess.run([BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", *args],
                          capture_output=True, text=True, timeout=120)


def _measured(page: Path, expression: str, width: int = 1200):
    """A JavaScript expression's value (as JSON) in the page laid out `width` pixels wide: a copy of it writes
    the value into the DOM."""
    probe = page.with_name(f"probe-{page.name}")
    probe.write_text(page.read_text().replace(
        "</body>", f"<script>document.body.dataset.measure = JSON.stringify({expression});</script></body>"))
    dom = _browser("--dump-dom", f"--window-size={width},900", probe.as_uri()).stdout
    return json.loads(html.unescape(re.search(r'data-measure="([^"]*)"', dom).group(1)))


def _rendered_height(page: Path) -> int:
    """The page's laid-out height in the browser."""
    return _measured(page, "document.documentElement.scrollHeight")


def _screenshot(page: Path, height: int = 900, width: int = 1200) -> np.ndarray:
    import matplotlib.image

    shot = page.with_suffix(".png")
    _browser(f"--screenshot={shot}", f"--window-size={width},{height}", page.as_uri())
    return matplotlib.image.imread(shot)[..., :3]


def _greens_and_reds(pixels: np.ndarray) -> tuple[int, int]:
    r, g, b = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    green = (g > r + 0.15) & (g > b + 0.15)
    red = (r > g + 0.15) & (r > b + 0.15)
    return int(green.sum()), int(red.sum())


def test_colors_follow_captum():
    assert color(1.0) == "hsl(120, 75%, 50%)" and color(-1.0) == "hsl(0, 75%, 60%)"
    assert color(0.0) == "hsl(0, 75%, 100%)" and color(3.0) == color(1.0)


def test_a_page_shows_positive_tokens_green_and_negative_red(tmp_path):
    only_positive, only_negative = _record(0, 30), _record(1, 30)
    only_positive.token_scores = torch.tensor([0.0] + [0.9] * 28 + [0.0])
    only_negative.token_scores = torch.tensor([0.0] + [-0.9] * 28 + [0.0])
    counts = {}
    for name, document in (("positive", only_positive), ("negative", only_negative)):
        page = tmp_path / f"{name}.html"
        page.write_text(document_page(document, {}))
        pixels = _screenshot(page)
        assert pixels.std() > 0.05, f"{name}: the page rendered blank"
        counts[name] = _greens_and_reds(pixels)
    # the legend is on both pages; the text's colour is what differs
    assert counts["positive"][0] > 2000 and counts["positive"][0] > 5 * counts["negative"][0]
    assert counts["negative"][1] > 2000 and counts["negative"][1] > 5 * counts["positive"][1]


def test_a_page_lists_words_toward_and_away_by_sign_never_both(tmp_path):
    """The two tables are the ends of the ranking by sign: a short text does not show its words in both, and a
    document scored all positive lists nothing away from its target, its passages neither (an empty list under
    its heading looked like a page that failed to load)."""
    short, only_positive = _record(0, 8), _record(1, 30)
    only_positive.token_scores = torch.tensor([0.0] + [0.1 * (1 + j % 5) for j in range(28)] + [0.0])
    tables = "Array.from(Array.from(document.querySelectorAll('.tables')).pop().children).map(d => " \
             "[d.querySelector('h3').innerText, " \
             "Array.from(d.querySelectorAll('tr')).slice(1).map(r => [r.cells[0].innerText, +r.cells[1].innerText])])"
    passages = "Array.from(document.querySelectorAll('.tables')[0].children).map(d => " \
               "[d.querySelector('h3').innerText, d.querySelectorAll('li').length])"
    shown, shown_passages = {}, {}
    for name, document in (("short", short), ("positive", only_positive)):
        page = tmp_path / f"{name}.html"
        page.write_text(document_page(document, {"0": "neg", "1": "pos"}, top_k=20))
        shown[name] = _measured(page, tables)
        shown_passages[name] = _measured(page, passages)
    (toward_title, toward), (away_title, away) = shown_passages["positive"]
    assert toward_title == "Passages pushing most toward pos (1)" and toward >= 1
    assert (away_title, away) == ("No passages pushing away from pos (1)", 0)
    (toward_title, toward), (away_title, away) = shown["short"]
    assert toward_title.startswith(f"Top {len(toward)} ") and away_title.startswith(f"Top {len(away)} ")
    assert len(toward) + len(away) == 6 and not {w for w, _ in toward} & {w for w, _ in away}
    assert all(score > 0 for _, score in toward) and all(score < 0 for _, score in away)
    (toward_title, toward), (away_title, away) = shown["positive"]
    assert len(toward) == 20 and away == [] and away_title == "No words away from pos (1)"


def test_page_height_grows_with_the_document(tmp_path):
    heights = []
    for n_tokens in (20, 2000):
        page = tmp_path / f"doc-{n_tokens}.html"
        page.write_text(document_page(_record(0, n_tokens), {}))
        heights.append(_rendered_height(page))
    assert heights[1] > heights[0] + 500


def test_tokens_and_labels_are_text_and_run_nothing(tmp_path):
    document = _record(0, 10)
    document.tokens[3] = ATTACK
    document.tokens[4] = 'say "hi" & <b>bye</b>'
    document.token_scores[3] = 2.0      # the top token
    labels = {"0": ATTACK, "1": "fine & dandy"}
    index = write_report([document], labels, tmp_path / "report", f"title {ATTACK}")
    for page in (index, tmp_path / "report" / "document-0.html"):
        source = page.read_text()
        assert ATTACK not in source and html.escape(ATTACK) in source
        dom = _browser("--dump-dom", page.as_uri()).stdout
        assert "alert(1)" not in "".join(re.findall(r"<script[^>]*>(.*?)</script>", dom, flags=re.S))
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in dom          # shown as text
        assert "<b>bye</b>" not in dom


def test_index_lists_every_document_sortably_with_class_charts(tmp_path):
    records = [_record(i, 12 + i, seed=i) for i in range(6)]
    index = write_report(records, {"0": "neg", "1": "pos"}, tmp_path / "report", "six documents")
    source = index.read_text()
    for r in records:
        assert f'href="document-{r.id}.html"' in source and (tmp_path / "report" / f"document-{r.id}.html").exists()
    assert source.count("data:image/png;base64,") == 4          # 2 classes x (by sum, by mean)
    assert "http" not in source.replace("http://www.w3.org/2000/svg", "")   # nothing fetched
    pixels = _screenshot(index, 1400)
    assert pixels.std() > 0.05
    greens, reds = _greens_and_reds(pixels)
    assert greens > 500 and reds > 500                          # the charts' bars


def test_the_index_says_each_documents_estimated_error_and_which_fell_short(tmp_path):
    """The default call states an accuracy: the index shows each document's estimated error, sortable, and marks
    those that max_steps stopped short of it; a run of fixed steps has no such column."""
    from dataclasses import replace

    records = [replace(_record(i, 12, seed=i), estimated_error=err, tolerance_met=met)
               for i, (err, met) in enumerate([(3e-4, True), (4e-2, False), (1e-5, True)])]
    index = tmp_path / "index.html"
    index.write_text(index_page(records, {}, "default call"))
    rows = _measured(index, "Array.from(document.querySelectorAll('#documents tr')).map(r => r.innerText)")
    assert "estimated error" in rows[0]
    assert [row.split("\t")[-1] for row in rows[1:]] == ["3.0e-04", "4.0e-02 (short)", "1.0e-05"]
    assert rows[0].split("\t")[:3] == ["document", "label", "prediction"]
    # a run of fixed steps has no estimate, data without labels no label: no column of blanks
    index.write_text(index_page([replace(_record(i, 12, seed=i), label=None) for i in range(3)], {}, "fixed steps"))
    header = _measured(index, "document.querySelector('#documents tr').innerText").split("\t")
    assert header == ["document", "prediction", "target", "probability", "delta", "tokens"]


def test_a_report_written_again_keeps_no_page_of_the_earlier_one(tmp_path):
    """Nothing mixed with stale results: `attribute --out r.json` of 3 records, then of 1, into the same
    r.report/ left pages 1 and 2 of the first run beside the second's index. A user's own file stays."""
    out = tmp_path / "report"
    write_report([_record(i, 12, seed=i) for i in range(3)], {}, out, "first")
    (out / "notes.txt").write_text("mine")
    write_report([_record(0, 9, seed=7)], {}, out, "second")
    assert sorted(p.name for p in out.iterdir()) == ["document-0.html", "index.html", "notes.txt"]


def test_a_long_report_shows_its_pages_being_written(tmp_path, monkeypatch, capsys):
    """~17 ms a page: 25,000 documents wrote for minutes without a word; past PAGES_BAR_DELAY_S a bar shows."""
    from fastig.app import report

    records = [_record(i, 12, seed=i) for i in range(5)]
    write_report(records, {}, tmp_path / "quick", "quick")
    assert "writing pages" not in capsys.readouterr().err
    monkeypatch.setattr(report, "PAGES_BAR_DELAY_S", 0.0)
    write_report(records, {}, tmp_path / "long", "long")
    assert "writing pages" in capsys.readouterr().err


def test_integrand_svg_plots_every_point():
    svg = integrand_svg([0.1, 0.5, 0.9], [1.0, -2.0, 3.0])
    assert svg.count(",") >= 3 and "polyline" in svg


def test_report_command_on_a_result_json(saved_model, tmp_path, capsys):
    model = str(saved_model("bert"))
    out = tmp_path / "result.json"
    assert exit_code(["attribute", "--model", model, "--text", "the good movie", "--text", f"a bad {ATTACK} plot",
                      "--n-steps", "8", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert str(out.with_suffix(".report") / "index.html") in printed
    assert exit_code(["report", str(out), "--out", str(tmp_path / "again"), "--tokens"]) == 0
    assert sorted(p.name for p in (tmp_path / "again").iterdir()) == ["document-0.html", "document-1.html",
                                                                      "index.html"]
    labels = json.loads(out.read_text())["labels"]
    assert labels == {"0": "LABEL_0", "1": "LABEL_1", "2": "LABEL_2"}
    # Documents without labels grouped by label: refused as aggregate refuses it, before any page (the index
    # was grouped by target, in a folder named by label)
    capsys.readouterr()
    assert exit_code(["report", str(out), "--by", "label"]) == 2
    assert "--by label: this run has no labels" in capsys.readouterr().err
    assert not list(tmp_path.glob("*by-label*"))


def test_a_result_saved_from_python_is_reported_with_its_label_names(models, tokenizer, tmp_path, monkeypatch):
    """json.dump(res.to_dict()) is the file `fastig report` reads, label names included (a notebook's result
    had no way to its report but through the command line's attribute)."""
    import fastig

    model = models("bert")
    monkeypatch.setattr(model.config, "id2label", {0: "sad", 1: "calm", 2: "glad"})
    result = fastig.Engine(model, tokenizer).attribute(["the good movie", "a bad plot"], n_steps=4)
    (tmp_path / "result.json").write_text(json.dumps(result.to_dict()))
    assert exit_code(["report", str(tmp_path / "result.json"), "--out", str(tmp_path / "report")]) == 0
    index = (tmp_path / "report" / "index.html").read_text()
    assert f"{result.labels[str(int(result.prediction[0]))]} ({int(result.prediction[0])})" in index


def test_report_of_something_else_is_refused(tmp_path, capsys):
    (tmp_path / "x.json").write_text("[1, 2]")
    assert exit_code(["report", str(tmp_path / "x.json"), "--out", str(tmp_path / "r")]) == 2
    assert "neither a `fastig dataset` folder nor a result.json" in capsys.readouterr().err


def test_attribution_renders_in_notebooks_and_as_a_captum_record(models, tokenizer, monkeypatch):
    """A notebook shows each document's row with the model's label names (it showed bare class ids), up to
    NOTEBOOK_ROWS rows and a line for the rest (25,000 reviews' rows would be ~590 MB of HTML)."""
    from captum.attr import visualization

    import fastig
    import fastig.result
    result = fastig.Engine(models("bert"), tokenizer).attribute(["the good movie", "bad & plot"], n_steps=4)
    markup = result._repr_html_()
    assert markup.count("<tr>") == 3 and ">&amp;</mark>" in markup and ">&</mark>" not in markup
    assert f"<td>LABEL_{int(result.prediction[0])} ({int(result.prediction[0])}) (" in markup
    monkeypatch.setattr(fastig.result, "NOTEBOOK_ROWS", 1)
    markup = result._repr_html_()
    assert markup.count("<tr>") == 2 and "and 1 more documents" in markup
    record = result.to_captum_record(1, true_label=0)
    assert isinstance(record, visualization.VisualizationDataRecord)
    rendered = visualization.visualize_text([record], legend=False).data    # Captum's own renderer takes it
    assert all(f" {token} " in rendered for token in ("bad", "plot"))
    assert record.raw_input_ids == result.tokens[1] and record.true_class == 0
    assert record.attr_score == pytest.approx(float(result.token_scores[1].sum()))


def test_a_notebook_highlights_words_not_vocabulary_pieces(tmp_path):
    """A notebook's table reads as the text: a WordPiece's "un" "##work" "##ably" is one highlighted
    "unworkably" scoring its pieces' sum, as in the reports and printed tables (it showed "un work ably")."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    import fastig
    from conftest import COMMON

    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "film", "was", "un", "##work",
                                "##ably"]))
    tokenizer = BertTokenizerFast(vocab=str(vocab))
    model = BertForSequenceClassification(BertConfig(**{**COMMON, "vocab_size": 11})).eval()
    result = fastig.Engine(model, tokenizer).attribute("the film was unworkably", n_steps=4)
    assert result.tokens[0][4:7] == ["un", "##work", "##ably"]
    word = result.words(0)[-1]
    assert word.text == "unworkably" and word.score == pytest.approx(float(result.token_scores[0, 4:7].sum()))
    for markup in result._repr_html_(), result.documents[0]._repr_html_():     # a result, and one record of it
        assert f'title="{word.score:+.4f}">unworkably</mark>' in markup
        assert ">work</mark>" not in markup and ">un</mark>" not in markup


def test_a_chinese_page_shows_its_text_as_written_and_passages_by_sentence(tmp_path):
    """A Chinese review through an XLM-R-kind tokenizer: the page shows the text as written (no spaces put
    between its pieces, each piece highlighted), and its passages end at the ideographic full stop (the
    whole document was one passage) and the closing quote after it (which began the next passage)."""
    import fastig

    from conftest import CORPUS, make_byte_level_model, unigram_tokenizer

    sentences = ["这部电影非常好看。", "他说：“演员的表演很精彩！”", "我不喜欢这个故事，情节太无聊了。", "「真的吗？」"]
    tokenizer = unigram_tokenizer(CORPUS + sentences, vocab_size=300)
    text = "".join(sentences)
    result = fastig.Engine(make_byte_level_model("roberta", tokenizer), tokenizer).attribute(text, n_steps=4)
    page = document_page(result.documents[0], result.labels)
    (tmp_path / "page.html").write_text(page)
    assert text in _measured(tmp_path / "page.html", "document.body.innerText")
    assert page.count("<mark") >= len(text) // 3
    passages = [html.unescape(p) for p in re.findall(r'<li><a href="#s\d+">(.*?)</a>', page)]
    assert sorted(set(passages)) == sorted(sentences), passages


def test_a_full_stop_inside_a_number_or_name_does_not_end_a_passage(byte_level_tokenizer):
    """"Gains of 3.5% over the baseline!" was listed as two passages, "gains of 3." and "5% over the baseline!",
    since the tokenizer's words split "3.5" at its full stop: a full stop, ! or ? ends a sentence only where the
    text goes on after a space (or a closing quote), or ends."""
    import fastig

    from conftest import make_byte_level_model

    sentences = ["Our method improves the model; results (Table 2) show gains of 3.5% over the baseline!",
                 "See www.example.com?!", "The component works.", "Reagan's approach \u2014 \"it works.\"", "Yes"]
    text = " ".join(sentences)
    tokenizer = byte_level_tokenizer
    result = fastig.Engine(make_byte_level_model("roberta", tokenizer), tokenizer).attribute(text, n_steps=4)
    page = document_page(result.documents[0], result.labels)
    passages = [html.unescape(p) for p in re.findall(r'<li><a href="#s\d+">(.*?)</a>', page)]
    assert sorted(passages) == sorted(sentences), passages


def test_a_cut_document_shows_what_the_model_did_not_read(models, tokenizer, tmp_path):
    """A document longer than the model reads: its page says how many tokens were cut and shows their text
    grey after the explained words (the page ended at the cut as if the document did), and the index counts
    them; a long passage is listed shortened at a word's end, marked (cut mid-word, "w18 fi" read as a word)."""
    import fastig

    words = [f"w{(7 * k) % 100}" for k in range(60)]
    text = " ".join(words[:50]) + ". " + " ".join(words[50:]) + "."
    assert text[160] != " "         # the listed passage's length falls inside a word
    with pytest.warns(fastig.TruncationWarning, match="the first 55 kept and 7 dropped"):
        result = fastig.Engine(models("bert"), tokenizer).attribute(text, n_steps=4, max_length=55)
    document = result.documents[0]
    assert document.truncated_tokens == 7
    page = tmp_path / "page.html"
    page.write_text(document_page(document, result.labels))
    shown = _measured(page, "[document.querySelector('.text').innerText, document.querySelector('.cut').innerText, "
                            "getComputedStyle(document.querySelector('.cut')).color, "
                            "Array.from(document.querySelectorAll('li a')).map(a => a.innerText), "
                            "document.body.innerText]")
    whole, cut, cut_colour, passages, body = shown
    assert whole.strip() == text and cut.strip() == " ".join(words[54:]) + "."     # 50 words, ".", 4 words read
    assert cut_colour == "rgb(119, 119, 119)"
    assert "The model read 57 tokens of this document and explains those: 7 more were cut" in body
    longest = max(passages, key=len)
    assert longest.endswith(" …") and len(longest) <= 162 and text.startswith(longest[:-2])
    assert longest[:-2].split() == words[:len(longest[:-2].split())]
    index = tmp_path / "index.html"
    index.write_text(index_page(result.documents, result.labels, "cut"))
    tokens_cell = ("document.querySelector('#documents tbody tr').cells[Array.from(document.querySelectorAll("
                   "'#documents th')).map(th => th.innerText).indexOf('tokens')].innerText")
    assert _measured(index, tokens_cell) == "57 (7 cut)"


# The seed's case: a Longformer with a byte-level BPE tokenizer explaining documents of 2,000+ tokens.
MARKERS = ("\u0120", "\u010a", "\u00e2\u0122", "\u00c3\u00a9", "\u2581", "##", "<s>", "</s>")    # Ġ Ċ âĢ Ã© ▁


@pytest.fixture(scope="module")
def long_report(tmp_path_factory, byte_level_tokenizer):
    from dataclasses import replace

    import fastig
    from fastig.app.report import Source

    from conftest import byte_level_text, make_byte_level_model

    model = make_byte_level_model("longformer", byte_level_tokenizer)
    texts = [byte_level_text(110, seed) for seed in range(3)]
    result = fastig.Engine(model, byte_level_tokenizer).attribute(texts, n_steps=4)
    records = [replace(d, id=i, label=i % 2) for i, d in enumerate(result.documents)]
    out = tmp_path_factory.mktemp("long") / "report"
    index = write_report(records, {"0": "other", "1": "AI paper"}, out, "papers",
                         source=Source({"model": "a byte-level BPE Longformer", "data": "three long papers"}))
    return out, index, records


def test_a_long_byte_level_page_shows_the_text_itself(long_report):
    out, _, records = long_report
    assert all(len(r.tokens) >= 2000 for r in records)
    page = out / "document-1.html"
    text = _measured(page, "document.body.innerText")
    assert not [m for m in MARKERS if m in text], "vocabulary pieces or mojibake are visible"
    # the document's own words, punctuation and characters, as written
    assert "Reagan's approach \u2014 it works, doesn't it? A caf\u00e9, a r\u00e9sum\u00e9." in text
    assert "attributions toward AI paper" in text and "a byte-level BPE Longformer" in text
    assert 'href="index.html"' in page.read_text()


def test_a_long_page_is_visibly_coloured_across_its_width(long_report):
    out, _, _ = long_report
    page = out / "document-0.html"
    width = _measured(page, "document.querySelector('.text').getBoundingClientRect().width", width=1400)
    assert width > 0.9 * 1400 - 80                      # the text runs the window's width, less the margins
    pixels = _screenshot(page, height=1400, width=1400)
    greens, reds = _greens_and_reds(pixels)
    assert greens > 10000 and reds > 10000, (greens, reds)     # colour scaled to the document, not washed out


def test_the_index_and_its_charts_can_be_read(long_report):
    import struct

    out, index, records = long_report
    source = index.read_text()
    charts = re.findall(r'src="data:image/png;base64,([^"]+)"', source)
    assert len(charts) == 4                             # two targets, by sum and by mean
    for chart in charts:
        png = base64.b64decode(chart)
        width, height = struct.unpack(">II", png[16:24])
        assert width >= 500 and height >= 15 * 28, (width, height)     # 11 pt labels, a row per word
    text = _measured(index, "document.body.innerText")
    assert "other" in text and "AI paper" in text and not [m for m in MARKERS[:5] if m in text]


def test_the_index_shows_its_documents_first_and_its_settings_on_a_click(tmp_path):
    """A data set's index opened on 22 rows of settings and showed no document on its first screen: the settings
    are folded under one line that names them, the documents' table within the first screen."""
    from fastig.app.report import Source

    settings = {f"setting_{i}": f"value {i}" for i in range(22)}
    index = tmp_path / "index.html"
    index.write_text(index_page([_record(i, 12, seed=i) for i in range(3)], {}, "a run", source=Source(settings)))
    table_top = _measured(index, "document.getElementById('documents').getBoundingClientRect().top")
    assert table_top < 400, table_top
    shown = _measured(index, "document.body.innerText")
    assert "How these were computed (setting_0, setting_1, setting_2, setting_3 and 18 more)" in shown
    assert "value 21" not in shown
    opened = _measured(index, "(document.querySelector('details').open = true, document.body.innerText)")
    assert all(f"setting_{i}\tvalue {i}" in opened for i in range(22))


def test_a_short_chart_beside_a_tall_one_keeps_its_size(tmp_path):
    """Words in three documents or more are few here: the by-mean chart is short, the by-sum one tall."""
    records = [_record(0, 40), _record(2, 5, seed=1), _record(4, 5, seed=2)]      # all toward class 0
    index = tmp_path / "index.html"
    index.write_text(index_page(records, {}, "short and tall"))
    sizes = _measured(index, "Array.from(document.images).map(i => [i.width, i.height, i.naturalWidth, "
                             "i.naturalHeight])")
    assert len(sizes) == 2 and sizes[0][3] > 2 * sizes[1][3]
    assert all([width, height] == [natural_width, natural_height]
               for width, height, natural_width, natural_height in sizes), sizes

