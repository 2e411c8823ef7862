"""Properties of the engine users rely on: chunking and batching change nothing, baselines, summaries."""

from contextlib import contextmanager

import numpy as np
import pandas as pd
import pytest
import torch

import fastig
from fastig.models import output_captured, output_replaced
from fastig.summarize import token_scores

from conftest import (FAMILIES, assert_close, byte_level_text, make_byte_level_model, make_model, make_text,
                      stop_at_group)

N_STEPS = 9


@pytest.mark.parametrize("family", FAMILIES)
def test_chunk_size_does_not_change_results(models, tokenizer, family):
    engine = fastig.Engine(models(family), tokenizer)
    text = make_text(60, seed=7)
    runs = [engine.attribute(text, n_steps=N_STEPS, chunk_size=c) for c in (1, 3, N_STEPS)]
    for run in runs[1:]:
        assert_close(run.attributions, runs[0].attributions, rtol=1e-5, atol=1e-7, what="attributions")
        scale = float(runs[0].integrand.abs().max())
        assert_close(run.integrand, runs[0].integrand, rtol=1e-5, atol=1e-5 * scale, what="integrand")
        assert_close(run.delta, runs[0].delta, rtol=0, atol=1e-6, what="delta")
    assert [r.stats.chunk_size for r in runs] == [[1], [3], [N_STEPS]]


def test_big_bird_documents_get_the_attention_they_get_alone(tokenizer, caplog):
    """A block-sparse BigBird runs full attention at 36 tokens or fewer (this config) and switches itself to it for
    good: neither a short document in the same call nor one in an earlier call changes a document's result, and
    the model is left block-sparse; its warnings of what fastig takes care of are not shown."""
    short, long = make_text(32, seed=1), make_text(36, seed=2)     # 34 and 38 tokens: within packing's slack
    alone = [fastig.Engine(make_model("big-bird"), tokenizer).attribute(text, n_steps=N_STEPS) for text in (short, long)]
    model = make_model("big-bird")
    engine = fastig.Engine(model, tokenizer)
    engine.attribute(long, n_steps=N_STEPS)       # measures the length: then the two may share calls
    together = engine.attribute([short, long], n_steps=N_STEPS)
    assert model.bert.attention_type == "block_sparse"
    after_short = engine.attribute(long, n_steps=N_STEPS)
    for got, expected in [(together.attributions[0], alone[0]), (together.attributions[1], alone[1]),
                          (after_short.attributions[0], alone[1])]:
        assert_close(got, expected.attributions[0], rtol=1e-5, atol=1e-7, what="attributions")
    assert not [r.message for r in caplog.records if "attention type" in r.message.lower()]


def test_a_pair_of_texts_is_the_model_input_its_tokenizer_makes(models, tokenizer):
    """(premise, hypothesis): the tokenizer's pair template with its token types, so F(x) is what the model
    gives on tokenizer(a, b); the baseline keeps the three special tokens; shown as one text, A, a blank
    line, B, with B's words after A's."""
    pair = ("the good movie", "a bad plot & the actor")
    model = models("bert")
    engine = fastig.Engine(model, tokenizer)
    result = engine.attribute([pair, make_text(7)], n_steps=N_STEPS)
    (doc,) = engine.documents([pair])
    assert doc.tokens == ["[CLS]", "the", "good", "movie", "[SEP]", "a", "bad", "plot", "&", "the", "actor", "[SEP]"]
    assert doc.model_kwargs["token_type_ids"].tolist() == [0] * 5 + [1] * 7
    assert doc.baseline_ids.tolist() == [2, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 3] and doc.special_positions == [0, 4, 11]
    assert result.documents[0].text == "the good movie\n\na bad plot & the actor"
    assert result.documents[0].word_ids == [None, 0, 1, 2, None, 3, 4, 5, 6, 7, 8, None]
    with torch.no_grad():
        expected = torch.softmax(model(**tokenizer(*pair, return_tensors="pt")).logits[0], -1)
    assert_close(result.probs[0], expected, rtol=1e-5, atol=1e-7, what="probabilities")
    alone = engine.attribute([pair], n_steps=N_STEPS)
    assert_close(result.attributions[0], alone.attributions[0], rtol=1e-5, atol=1e-7, what="attributions")


def test_a_pair_is_cut_longest_text_first(models, tokenizer):
    engine = fastig.Engine(models("bert"), tokenizer)
    with pytest.warns(fastig.TruncationWarning, match=r"a pair of 70 tokens, 20 kept and 50 dropped, from the longer"):
        (doc,) = engine.documents([(make_text(30), make_text(40))], max_length=20)
    assert doc.model_kwargs["token_type_ids"].tolist() == [0] * 12 + [1] * 11     # 10 text tokens of each
    with pytest.raises(fastig.EmptyTextError, match="pair's text ''"):
        engine.documents([("a film", "")])


def test_equal_lengths_stack_into_tensors(models, tokenizer):
    result = fastig.Engine(models("bert"), tokenizer).attribute([make_text(8, 1), make_text(8, 2)], n_steps=4)
    assert result.attributions.shape == (2, 10, 32) and result.token_scores.shape == (2, 10)
    assert result.input_ids.shape == (2, 10) and result.probs.shape == (2, 3)


def test_equal_lengths_in_several_groups_stack_in_order(models, tokenizer):
    """Documents of one length return one [B, L, H] tensor; computed in several groups (other baselines are
    not packed together), each row is its document's own result."""
    engine = fastig.Engine(models("bert"), tokenizer)
    texts, baselines = [make_text(12, seed) for seed in range(4)], ["pad", "zeros", "pad", "zeros"]
    result = engine.attribute(texts, n_steps=6, baseline=baselines)
    assert len(result.stats.documents_per_group) >= 2 and result.attributions.shape == (4, 14, 32)
    for i, (text, baseline) in enumerate(zip(texts, baselines)):
        alone = engine.attribute(text, n_steps=6, baseline=baseline)
        assert_close(result.attributions[i], alone.attributions[0], rtol=1e-5, atol=1e-6, what=f"document {i}")


def test_inputs_follow_the_seed_construction(models, tokenizer):
    engine = fastig.Engine(models("longformer"), tokenizer)
    with pytest.warns(fastig.TruncationWarning, match=r"the first 1 kept and 1 dropped \(max_length\)"):
        (doc,) = engine.documents("good movie", max_length=1)
    assert doc.tokens == ["[CLS]", "good", "[SEP]"]
    assert doc.baseline_ids.tolist() == [tokenizer.cls_token_id, tokenizer.pad_token_id, tokenizer.sep_token_id]
    assert doc.model_kwargs["global_attention_mask"].tolist() == [1, 0, 0]


def test_default_truncation_respects_position_limit(models, tokenizer):
    # The tiny RoBERTa has 520 positions, offset by padding_idx + 1 = 1: 519 tokens with CLS and SEP.
    engine = fastig.Engine(models("roberta"), tokenizer)
    with pytest.warns(fastig.TruncationWarning, match="83 dropped .the model's positions end there"):
        (doc,) = engine.documents(make_text(600))
    assert len(doc.input_ids) == 519
    with pytest.warns(fastig.TruncationWarning):
        result = engine.attribute(make_text(600), n_steps=2)
    assert result.documents[0].truncated_tokens == 83
    assert result.attributions.shape[1] == 519


def test_embedding_baseline_equals_its_id_baseline(models, tokenizer):
    engine = fastig.Engine(models("roberta"), tokenizer)
    text = make_text(20, seed=3)
    by_ids = engine.attribute(text, n_steps=N_STEPS, baseline="unk")
    (doc,) = engine.documents(text, baseline="unk")
    captured = []
    with torch.no_grad(), output_captured(engine.layer, captured):
        engine.model(input_ids=doc.baseline_ids.unsqueeze(0))
    by_embedding = engine.attribute(text, n_steps=N_STEPS, baseline=captured[0][0])
    assert_close(by_embedding.attributions, by_ids.attributions, rtol=1e-5, atol=1e-7, what="attributions")
    assert float(by_embedding.delta[0]) == pytest.approx(float(by_ids.delta[0]), abs=1e-6)


def test_zero_baseline_is_a_zero_layer_output(models, tokenizer):
    engine = fastig.Engine(models("longformer"), tokenizer)
    text = make_text(15, seed=9)
    zeros = engine.attribute(text, n_steps=N_STEPS, baseline="zeros", output="logits")
    # The tiny Longformer pads 17 tokens to its window of 16: the layer output has 32 positions.
    explicit = engine.attribute(text, n_steps=N_STEPS, baseline=torch.zeros(32, 32), output="logits")
    scale = float(zeros.attributions.abs().max())
    assert_close(explicit.attributions, zeros.attributions, rtol=1e-5, atol=1e-5 * scale, what="attributions")
    (doc,) = engine.documents(text, baseline="zeros")
    with torch.no_grad(), output_replaced(engine.layer, torch.zeros(1, 32, 32)):
        logits = engine.model(input_ids=doc.input_ids.unsqueeze(0),
                              **{k: v.unsqueeze(0) for k, v in doc.model_kwargs.items()}).logits
    assert float(zeros.output_at_baseline[0]) == pytest.approx(float(logits[0, zeros.target[0]]), abs=1e-6)


def test_integrand_sums_to_attributions(models, tokenizer):
    result = fastig.Engine(models("bert"), tokenizer).attribute(make_text(12), n_steps=N_STEPS)
    _, weights = fastig.quadrature.rule("gausslegendre", N_STEPS)
    assert float(result.integrand[0] @ weights) == pytest.approx(float(result.attributions.sum()), rel=1e-4)


def test_token_scores_are_unit_norm_and_ranked(models, tokenizer):
    result = fastig.Engine(models("bert"), tokenizer).attribute(make_text(30), n_steps=4)
    scores = result.token_scores[0]
    assert float(scores.norm()) == pytest.approx(1.0, abs=1e-6)
    assert torch.equal(scores, token_scores(result.attributions[0]))
    top, bottom = result.top_bottom(0, k=5)
    document = result.documents[0]
    # each shown token once, at its highest (top) or lowest (bottom) score; CLS and SEP are not ranked
    best, worst = {}, {}
    for p, (token, score) in enumerate(zip(document.display_tokens, scores.tolist())):
        if p not in document.special_positions:
            best[token], worst[token] = max(best.get(token, -9.0), score), min(worst.get(token, 9.0), score)
    assert [t.score for t in top] == sorted((s for s in best.values() if s > 0), reverse=True)[:5]
    assert [t.score for t in bottom] == sorted(s for s in worst.values() if s < 0)[:5]
    assert all(document.display_tokens[t.position] == t.token for t in top + bottom)
    assert not {t.position for t in top + bottom} & set(document.special_positions)
    # Without uniqueness and with k past the length, the two ends are every ranked token with a score, once.
    top, bottom = result.documents[0].top_bottom(k=len(scores), unique=False)
    assert sorted(t.position for t in top + bottom) == [p for p in range(1, len(scores) - 1) if scores[p] != 0]
    # k=-1 gave every token, as if no k were given
    for ask in (lambda k: result.top_bottom(0, k=k), lambda k: result.top_bottom_words(0, k=k)):
        assert ask(0) == ([], [])
        with pytest.raises(fastig.InputError, match=r"k=-1 must be an integer of 0 or more"):
            ask(-1)


def test_top_and_bottom_of_a_short_text_never_share_a_token(models, tokenizer):
    """The two lists are the ends of the ranking by sign: a text shorter than 2k tokens does not show its
    middle in both, and no token that pushes toward the class is listed as pushing away from it."""
    result = fastig.Engine(models("bert"), tokenizer).attribute(make_text(6), n_steps=4)
    top, bottom = result.top_bottom(0, k=20)
    scores = result.token_scores[0]
    assert top and bottom and len(top) + len(bottom) <= len(scores) - 2
    assert not {t.position for t in top} & {t.position for t in bottom}
    assert all(t.score > 0 for t in top) and all(t.score < 0 for t in bottom)


def test_a_results_words_are_its_texts_words_as_the_commands_rank_them(byte_level_tokenizer):
    """A notebook gets what the commands print, not vocabulary pieces: the text's words in order, each as the
    text has it and scoring the sum of its pieces' token scores, and their two ends are the table `fastig
    attribute` prints (before, the Python API ranked vocabulary pieces only)."""
    import io

    from fastig.app.text import print_result

    text = byte_level_text(3, seed=1)
    engine = fastig.Engine(make_byte_level_model("roberta", byte_level_tokenizer), byte_level_tokenizer)
    result = engine.attribute(text, n_steps=4)
    document, words = result.documents[0], result.words(0)
    scores = document.token_scores.tolist()
    assert "".join(w.text for w in words) == "".join(text.split())
    assert all(text[w.start:w.end] == w.text for w in words)
    assert all(w.score == pytest.approx(sum(scores[p] for p in w.positions), abs=1e-6) for w in words)
    positions = [p for w in words for p in w.positions]
    assert sorted(positions) == [p for p in range(len(scores)) if p not in document.special_positions]
    assert max(len(w.positions) for w in words) > 1, "no word of several pieces: nothing merged"
    top, bottom = result.top_bottom_words(0, k=5)
    assert top and bottom and all(t.score > 0 for t in top) and all(b.score < 0 for b in bottom)
    assert {t.text for t in top + bottom} <= {w.text for w in words}
    printed = io.StringIO()
    print_result(result, 5, file=printed)
    rows = printed.getvalue().splitlines()[2:]
    assert [row[2:18].strip() for row in rows] == [t.text for t in top] + [""] * (len(rows) - len(top))
    # each word's count beside its score, where it occurs more than once (the score is its best occurrence's)
    assert [row[27:32].strip() for row in rows[:len(top)]] == [f"×{t.count}" if t.count > 1 else "" for t in top]
    assert [row[33 + 27:33 + 32].strip() for row in rows[:len(bottom)]] == \
        [f"×{b.count}" if b.count > 1 else "" for b in bottom]
    assert any(t.count > 1 for t in top + bottom) and any(t.count == 1 for t in top + bottom)
    assert result.top_bottom_words(0, k=5, tokens=True) == document.top_bottom_words(5, tokens=True)


UNSPACED_TEXTS = ["这部电影非常好看，演员的表演很精彩。", "我不喜欢这个故事，情节太无聊了！", "とても面白い映画でした。"]


@pytest.mark.parametrize("kind", ["sentencepiece", "byte-level"])
def test_a_script_without_spaces_is_ranked_by_its_pieces(kind):
    """Tokenizers that split words at spaces (XLM-R's and mDeBERTa's SentencePiece, a byte-level BPE) give a
    Chinese or Japanese clause as one word, and it was the whole of a ranking's top: there each piece is a
    word of its own, while the words of a spaced script stay whole; the scores still sum to the tokens'."""
    from conftest import CORPUS, byte_level_bpe, roberta_kind_tokenizer, unigram_tokenizer

    unspaced_characters = set("".join(UNSPACED_TEXTS))
    corpus = CORPUS + UNSPACED_TEXTS
    tokenizer = (unigram_tokenizer(corpus, vocab_size=300) if kind == "sentencepiece" else
                 roberta_kind_tokenizer(byte_level_bpe(["<s>", "<pad>", "</s>", "<unk>", "<mask>"], corpus)))
    text = f"{UNSPACED_TEXTS[0]} The component works. {UNSPACED_TEXTS[2]}"
    result = fastig.Engine(make_byte_level_model("roberta", tokenizer), tokenizer).attribute(text, n_steps=4)
    document, words = result.documents[0], result.words(0)
    unspaced = [w for w in words if unspaced_characters & set(w.text)]
    assert "".join(w.text for w in unspaced) == "".join(c for c in text if c in unspaced_characters)
    assert len(unspaced) >= 15 and max(len(w.text) for w in unspaced) <= 3, [w.text for w in unspaced]
    assert "component" in [w.text for w in words]
    assert all(text[w.start:w.end] == w.text for w in words)
    scores = document.token_scores.tolist()
    assert sum(w.score for w in words) == pytest.approx(
        sum(score for p, score in enumerate(scores) if p not in document.special_positions), abs=1e-6)
    top, bottom = result.top_bottom_words(0, k=3)
    assert all(len(t.text) <= 9 for t in top + bottom)


def test_a_result_prints_as_a_short_summary_of_its_documents(tokenizer):
    """`res` at a prompt, or print(res), shows what a person reads: the call and each document on one line,
    the first few only. The dataclass's own repr printed every tensor (674,000 characters for 200 reviews,
    computed again for each notebook display of the result)."""
    model = make_model("bert")
    model.config.id2label = {0: "negative", 1: "positive", 2: "neutral"}
    texts = [make_text(5 + 4 * i, seed=i) for i in range(7)] + [("a premise", "its\nhypothesis")]
    result = fastig.Engine(model, tokenizer).attribute(texts, n_steps=4, target=1)
    lines = repr(result).splitlines()
    hidden = model.config.hidden_size
    assert lines[0].startswith("Attribution(documents=8, n_steps=4, method='gausslegendre', output='probs', "
                               f"attributions=8 tensors [L_i, {hidden}], seconds=")
    assert len(lines) == 1 + fastig.result.REPR_DOCUMENTS + 1 and lines[-1] == "  ... and 3 more: result.documents"
    for line, document in zip(lines[1:-1], result.documents):
        assert f"target=positive (1), delta={document.delta:.1e}" in line
        assert f"prediction={model.config.id2label[document.prediction]} ({document.prediction})" in line
        assert f"tokens={len(document.tokens)}" in line
    assert lines[1].endswith(f"text={texts[0]!r}") and len(lines[5]) < 250 and lines[5].endswith("\u2026'")
    pair = repr(result.documents[-1])
    assert pair.startswith("DocumentResult(tokens=") and "text='a premise its hypothesis'" in pair
    assert "\n" not in pair and len(pair) < 250
    engine, same_length = fastig.Engine(model, tokenizer), [make_text(6, seed=1), make_text(6, seed=2)]
    length = len(engine.documents(same_length[0])[0].input_ids)
    assert f"attributions=[2, {length}, {hidden}]" in repr(engine.attribute(same_length, n_steps=4))
    kept_none = repr(engine.attribute(same_length, n_steps=4, keep_attributions=False))
    assert "attributions=None" in kept_none and len(kept_none.splitlines()) == 3
    # The default call says what it asked for and, per document, what it estimates and where it stopped short
    default = engine.attribute(same_length, max_steps=9, accuracy=1e-6)
    lines = repr(default).splitlines()
    assert lines[0].startswith("Attribution(documents=2, accuracy=1e-06, method='clenshawcurtis', ")
    for line, document in zip(lines[1:], default.documents):
        assert f"evaluations=9, estimated_error={document.estimated_error:.1e}, tolerance_met=False, text=" in line
    assert "estimated_error" not in repr(result) and "tolerance_met" not in repr(result)


def test_an_engine_prints_what_it_runs(tokenizer):
    """At a notebook's prompt an engine showed an object address: it says its model, layer, device,
    precision, attention and memory budget."""
    engine = fastig.Engine(make_model("longformer"), tokenizer, precision="bf16", memory_budget="2GB")
    assert repr(engine) == ("Engine(LongformerForSequenceClassification, layer='longformer.embeddings', "
                            "device='cpu', precision='bf16', attention='banded', memory budget 2.0 GB)")


def test_a_calls_bar_tells_the_time_left_by_tokens(models, tokenizer, monkeypatch):
    """A long call's bar (progress=True, as `fastig attribute` runs) counts documents and tells the time left
    by tokens: groups go longest first, so tqdm's own estimate, by documents, overstated it. On a clock where
    time goes with tokens, the time left is right from the first group on."""
    from types import SimpleNamespace

    from tqdm import tqdm

    clock, run_group, shown = [0.0], fastig.Engine._attribute_group, []

    def group_on_the_clock(engine, docs, *args):       # a second a token
        result = run_group(engine, docs, *args)
        clock[0] += sum(len(doc.input_ids) for doc in docs)
        return result
    monkeypatch.setattr(fastig.Engine, "_attribute_group", group_on_the_clock)
    monkeypatch.setattr(fastig.engine, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    monkeypatch.setattr(tqdm, "set_postfix_str", lambda bar, text, refresh=True: shown.append(text))
    texts = [make_text(38, seed=1)] + [make_text(3, seed=2 + i) for i in range(8)]     # 40 tokens, then 8 x 5
    fastig.Engine(models("bert"), tokenizer).attribute(texts, n_steps=4, progress=True)
    left = [text.split(", ")[1] for text in shown]
    told = [text for text in left if text != "? left"]     # before the first group ends, nothing to tell
    assert left[0] == "? left" and told[0] == "00:40 left" and told[-1] == "00:00 left"


def test_a_long_call_shows_its_bar_unasked_and_a_short_one_nothing(models, tokenizer, monkeypatch, capsys):
    """progress=None (the default): a call shows its bar once it has run PROGRESS_DELAY_S, so hours of a
    notebook's call are no longer silent; a short call prints nothing, and progress=False never does. Into a
    file, the bar writes a line every LOG_INTERVAL_S, not after each model call."""
    engine, texts = fastig.Engine(models("bert"), tokenizer), [make_text(20, seed) for seed in range(3)]
    engine.attribute(texts, n_steps=4)
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(fastig.engine, "PROGRESS_DELAY_S", 0.0)        # every call is long now
    engine.attribute(texts, n_steps=4)
    shown = capsys.readouterr().err
    assert "attributing" in shown and "model evaluations" in shown
    engine.attribute(texts, n_steps=4, progress=False)
    assert capsys.readouterr().err == ""
    # stderr to a file (a cluster job's log): a line every LOG_INTERVAL_S at most, not one a model call
    result = engine.attribute(texts, n_steps=8, chunk_size=1, progress=True)
    lines = capsys.readouterr().err.replace("\r", "\n").count("model evaluations")
    assert result.stats.model_calls >= 24 and lines == 1, lines
    # ... but a notebook's bar is seen as it moves: tqdm.auto's class there subclasses tqdm.notebook's
    from tqdm.auto import tqdm
    from tqdm.notebook import tqdm_notebook
    notebook_bar = type("tqdm", (tqdm_notebook,), {"__module__": "tqdm.auto"})
    assert fastig.engine.shown_live(notebook_bar) and not fastig.engine.shown_live(tqdm)


def test_a_character_the_vocabulary_lacks_is_ranked_and_shown_as_itself(models, tokenizer):
    """An emoji or a character an English WordPiece vocabulary lacks is [UNK], a token of the text: it is
    attributed, ranked, highlighted and aggregated as the characters it stands for, not left out as the
    tokenizer's special-token mask (which counts UNK) would have it."""
    from fastig.app.aggregate import _units

    document = fastig.Engine(models("bert"), tokenizer).attribute("the film \u2603 good", n_steps=4).documents[0]
    assert document.tokens[3] == "[UNK]" and document.shown_tokens[3] == "\u2603"
    assert document.special_positions == [0, 5] and float(document.token_scores[3]) != 0
    top, bottom = document.top_bottom(k=10)
    assert 3 in [t.position for t in top + bottom]
    assert ("\u2603", float(document.token_scores[3])) in [(w.text, w.score) for w in document.words()]
    assert "\u2603" in [text for text, _ in _units(document, merge_subwords=True)]


def test_parameters_are_left_as_they_were(models, tokenizer):
    model = models("distilbert")
    before = {n: p.requires_grad for n, p in model.named_parameters()}
    forward = model.distilbert.embeddings.forward
    fastig.Engine(model, tokenizer).attribute("good film", n_steps=3)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == before
    assert "forward" not in vars(model.distilbert.embeddings) and model.distilbert.embeddings.forward == forward
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("family", ["bert", "longformer"])
def test_a_model_in_training_is_explained_without_dropout_and_left_training(tokenizer, family):
    """Explaining mid-training (dropout on): the attributions and Captum's reference are the model's in eval mode,
    each module's mode as it was after, also where one differs from its parent's; before, Engine(model) switched
    the model to eval for good, and a model put back in training gave random attributions (delta -0.37)."""
    from fastig.reference import captum_attribute

    model, text = make_model(family), make_text(40)
    engine = fastig.Engine(model, tokenizer)
    expected, expected_captum = engine.attribute(text, n_steps=N_STEPS), captum_attribute(engine, text, n_steps=N_STEPS)
    model.train()
    model.classifier.eval()
    modes = {name: module.training for name, module in model.named_modules()}
    engine = fastig.Engine(model, tokenizer)
    assert {name: module.training for name, module in model.named_modules()} == modes
    for _ in range(2):      # dropout would draw anew each call
        actual = engine.attribute(text, n_steps=N_STEPS)
        assert_close(actual.attributions, expected.attributions, rtol=1e-5, atol=1e-7, what="attributions")
        assert {name: module.training for name, module in model.named_modules()} == modes
    captum = captum_attribute(engine, text, n_steps=N_STEPS)
    assert_close(captum.attributions[0], expected_captum.attributions[0], rtol=1e-5, atol=1e-7, what="Captum's")
    assert {name: module.training for name, module in model.named_modules()} == modes


@pytest.mark.parametrize("family", ["bert", "longformer"])
def test_probabilities_before_explaining_are_the_records(tokenizer, family):
    """Engine.probabilities (a forward per document, what a data-set run picks a multi-label model's labels by)
    gives each document the probabilities its record shows, for texts of other lengths and a pair of texts, a
    model in training mode read without dropout and left training."""
    model = make_model(family)
    texts = [make_text(50, seed=1), make_text(7, seed=2), (make_text(9, seed=3), make_text(12, seed=4))]
    model.train()
    engine = fastig.Engine(model, tokenizer)
    probabilities = engine.probabilities(texts)
    assert model.training
    records = engine.attribute(texts, n_steps=3).documents
    assert probabilities.shape == (3, model.config.num_labels)
    assert_close(probabilities, torch.stack([r.probs for r in records]), rtol=0, atol=1e-6, what="probabilities")


def test_outputs_a_config_asks_for_are_left_out_of_the_steps(tokenizer, monkeypatch):
    """A model loaded with output_attentions or output_hidden_states (for a visualization) is explained as
    without them, and a Longformer's attention stays fastig's banded one: its maps sent it to Hugging Face's
    slow attention (1.9x the time for 2,048 tokens) and were kept for the backward."""
    from transformers.models.longformer.modeling_longformer import LongformerSelfAttention

    text = make_text(60)
    expected = fastig.Engine(make_model("longformer"), tokenizer).attribute(text, n_steps=N_STEPS)
    model = make_model("longformer")
    model.config.output_attentions = model.config.output_hidden_states = True
    monkeypatch.setattr(LongformerSelfAttention, "forward", lambda *args, **kwargs: pytest.fail("the model's own"))
    actual = fastig.Engine(model, tokenizer).attribute(text, n_steps=N_STEPS)
    assert_close(actual.attributions, expected.attributions, rtol=1e-5, atol=1e-7, what="attributions")
    assert model.config.output_attentions and model.config.output_hidden_states      # the config left as it was


@pytest.mark.parametrize("family", ["bert", "big-bird"])
def test_a_config_giving_tuples_is_explained_as_one_giving_outputs(tokenizer, family):
    """config.return_dict=False (older code, exports) made the model return tuples, and every call failed with
    an AttributeError ('logits'); BigBird's classifier reads its encoder's output by name whatever its call
    is given, so the config says it during the call, and is left as it was."""
    from fastig.reference import captum_attribute

    text, model = make_text(60), make_model(family)
    engine = fastig.Engine(make_model(family), tokenizer)
    expected, expected_captum = engine.attribute(text, n_steps=N_STEPS), captum_attribute(engine, text, n_steps=N_STEPS)
    model.config.return_dict = False
    engine = fastig.Engine(model, tokenizer)
    assert_close(engine.attribute(text, n_steps=N_STEPS).attributions, expected.attributions, rtol=1e-5, atol=1e-7)
    assert_close(captum_attribute(engine, text, n_steps=N_STEPS).attributions[0], expected_captum.attributions[0],
                 rtol=1e-5, atol=1e-7)
    assert engine.attribute(text).documents[0].evaluations > 0 and model.config.return_dict is False


@contextmanager
def float64_by_default():
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(torch.float32)


CALLERS_CONTEXTS = {"no_grad": torch.no_grad, "inference_mode": torch.inference_mode,
                    "bf16 autocast": lambda: torch.autocast("cpu", dtype=torch.bfloat16),
                    "float64 by default": float64_by_default}


@pytest.mark.parametrize("context", CALLERS_CONTEXTS)
@pytest.mark.parametrize("n_steps", [N_STEPS, None, "auto"])
def test_a_callers_context_changes_nothing(models, tokenizer, n_steps, context):
    """An evaluation loop's no_grad or inference mode (ids made in it too), a caller's bf16 autocast, or float64
    as torch's default dtype, gives the attributions made outside it (fastig's precision decides), and so does
    the Captum reference. Before, inference mode raised torch's "does not require grad", autocast and float64
    a dtype mismatch in the accumulation (float64: the default call's and n_steps="auto"'s)."""
    from fastig.reference import captum_attribute

    engine, text = fastig.Engine(models("bert"), tokenizer), make_text(30)
    expected = engine.attribute(tokenizer(text, return_tensors="pt")["input_ids"], n_steps=n_steps)
    with CALLERS_CONTEXTS[context]():
        ids = tokenizer(text, return_tensors="pt")["input_ids"]
        actual = engine.attribute(ids, n_steps=n_steps)
        captum = captum_attribute(engine, ids, n_steps=N_STEPS) if n_steps == N_STEPS else None
    assert_close(actual.attributions, expected.attributions, rtol=1e-5, atol=1e-7, what="attributions")
    if captum is not None:
        assert_close(captum.attributions[0], expected.attributions[0], rtol=1e-4, atol=1e-6, what="Captum's")


@pytest.mark.parametrize("target", [1, torch.tensor(1), torch.tensor([1]), [1], "LABEL_1", ["LABEL_1"],
                                    np.array([1]), np.array(1), pd.Series(["LABEL_1"]), pd.Series([1]).values])
def test_target_forms_are_equivalent(models, tokenizer, target):
    """An int in any form, or the label's name in the model's config (its label2id), is the same target: a
    data frame's label column (its values, a numpy array, were refused) too."""
    engine = fastig.Engine(models("bert"), tokenizer)
    reference = engine.attribute("good film", n_steps=4, target=np.int64(1))
    result = engine.attribute("good film", n_steps=4, target=target)
    assert int(result.target[0]) == 1
    assert_close(result.attributions, reference.attributions, rtol=1e-5, atol=1e-7, what="attributions")


def test_label_names_as_targets_and_a_name_the_model_lacks(models, tokenizer):
    engine = fastig.Engine(models("bert"), tokenizer)
    texts = ["good film", "bad plot"]
    named = engine.attribute(texts, n_steps=4, target=[["LABEL_2", "LABEL_0"], ["LABEL_0", "LABEL_1"]])
    assert named.target.tolist() == [2, 0, 0, 1]
    with pytest.raises(fastig.TargetError, match=r"'positive' is not a class index, a label of this model "
                                                 r"\(LABEL_0, LABEL_1, LABEL_2\) or 'all'"):
        engine.attribute(texts, n_steps=4, target="positive")


@pytest.mark.parametrize("label2id", [None, "LABEL_i"])
def test_the_names_outputs_show_are_targets_whatever_label2id_holds(models, tokenizer, monkeypatch, label2id):
    """transformers 5 keeps label2id None for a config made with id2label alone, and LABEL_i for one given
    id2label later (a fine-tuning script's `model.config.id2label = ...`): the names reports show are targets."""
    model = models("bert")
    monkeypatch.setattr(model.config, "id2label", {0: "sad", 1: "calm", 2: "glad"})
    monkeypatch.setattr(model.config, "label2id", None if label2id is None else
                        {"LABEL_0": 0, "LABEL_1": 1, "LABEL_2": 2})
    result = fastig.Engine(model, tokenizer).attribute(["good film", "bad plot"], n_steps=4, target=["glad", "sad"])
    assert result.target.tolist() == [2, 0]


@pytest.mark.parametrize("keep_attributions", [False, True])
def test_a_finished_groups_working_tensors_are_freed(models, tokenizer, monkeypatch, keep_attributions):
    """A call's memory is bounded by its groups', not by its documents: once a group's records are made, its
    [G, L, H] path tensors (end - start and the weighted gradient sum, on the device) are freed. They were held
    to the end of the call, two attribution sizes a document outside the memory budget."""
    import weakref

    import fastig.kernels

    finalize, earlier = fastig.kernels.finalize, []

    def watched(difference, gradient_sum):
        alive = [ref for ref in earlier if ref() is not None]
        assert not alive, f"{len(alive)} tensors of an earlier group are still held"
        earlier.extend((weakref.ref(difference), weakref.ref(gradient_sum)))
        return finalize(difference, gradient_sum)

    monkeypatch.setattr(fastig.kernels, "finalize", watched)
    texts = [make_text(n, seed=n) for n in (40, 25, 12, 6)]
    result = fastig.Engine(models("bert"), tokenizer).attribute(texts, chunk_size=2, keep_attributions=keep_attributions)
    assert len(result.stats.documents_per_group) > 1 and len(earlier) == 2 * len(result.stats.documents_per_group)


@pytest.mark.parametrize("family", ["bert", "longformer"])
def test_many_documents_without_their_hidden_size_attributions(models, tokenizer, monkeypatch, family):
    """A call whose [L, H] attributions cannot fit in host memory is refused before any work, naming
    keep_attributions=False; with it the records are the same, only the tensors are not kept."""
    import fastig.engine

    engine = fastig.Engine(models(family), tokenizer)
    texts = [make_text(n, seed=n) for n in (13, 30, 21)]
    kept = engine.attribute(texts, n_steps=8)
    monkeypatch.setattr(fastig.engine, "WIDEST_LAYER", 64)      # the bound leaves it open: H is measured
    monkeypatch.setattr(fastig.engine, "host_memory_available", lambda: 4 * 2**10)
    monkeypatch.setattr(fastig.Engine, "_attribute_group", lambda *args: pytest.fail("work was done"))
    with pytest.raises(fastig.MemoryBudgetError, match=r"\(70 tokens x 32 values, fp32\).*keep_attributions=False"):
        engine.attribute(texts, n_steps=8)
    monkeypatch.undo()
    monkeypatch.setattr(fastig.engine, "host_memory_available", lambda: 4 * 2**10)
    lean = engine.attribute(texts, n_steps=8, keep_attributions=False)
    assert lean.attributions is None
    for ours, theirs in zip(lean.documents, kept.documents):      # to fp32 rounding: calls of other sizes
        assert_close(ours.token_scores, theirs.token_scores, rtol=0, atol=1e-5, what="token scores")
        assert ours.delta == pytest.approx(theirs.delta, abs=1e-5) and ours.target == theirs.target


@pytest.mark.parametrize("family", ["bert", "longformer"])
def test_kept_attributions_take_host_memory_once(models, tokenizer, monkeypatch, family):
    """A call's kept attributions hold their own size of host memory, no more: documents of one length are
    written into one [B, L, H] tensor as their groups end (stacked at the end of the call they were held
    twice, and a call that fit once was refused), and a shorter document's [L, H] is its own tensor, not a
    view keeping its group's padded one (Longformer pads to its window) to the end of the call."""
    import fastig.engine

    engine = fastig.Engine(models(family), tokenizer)
    same = fastig.Engine(models(family), tokenizer).documents([make_text(20, seed) for seed in range(3)])
    ids = torch.stack([doc.input_ids for doc in same])
    whole = engine.attribute(ids, n_steps=4, chunk_size=4)
    monkeypatch.setattr(fastig.engine, "WIDEST_LAYER", 2**20)     # the bound leaves it open: H is measured
    monkeypatch.setattr(fastig.engine, "host_memory_available", lambda: int(1.5 * whole.attributions.numel() * 4))
    fitting = engine.attribute(ids, n_steps=4, chunk_size=4)
    assert len(fitting.stats.documents_per_group) > 1, "one group: nothing to write as groups end"
    assert torch.equal(fitting.attributions, whole.attributions)
    assert fitting.attributions.untyped_storage().nbytes() == fitting.attributions.numel() * 4
    monkeypatch.undo()
    mixed = engine.attribute([make_text(n, seed=n) for n in (30, 9, 24, 5)], n_steps=4)
    assert isinstance(mixed.attributions, list)
    assert all(a.untyped_storage().nbytes() == a.numel() * 4 for a in mixed.attributions)


def test_an_interrupt_keeps_the_documents_done(models, tokenizer, monkeypatch):
    """Ctrl-C (a notebook's stop) during a long call raises fastig.Interrupted, still a KeyboardInterrupt,
    whose .result holds the documents finished before it, each as the whole call gives it and named by its
    index: hours of a notebook's work were lost with the call before."""
    engine = fastig.Engine(models("bert"), tokenizer)
    texts, baselines = [make_text(12, seed) for seed in range(4)], ["pad", "zeros", "pad", "zeros"]
    whole = engine.attribute(texts, n_steps=6, baseline=baselines)
    calls = stop_at_group(monkeypatch)
    first_group = whole.stats.documents_per_group[0]
    with pytest.raises(fastig.Interrupted, match=f"{first_group} of 4 documents were done") as stop:
        engine.attribute(texts, n_steps=6, baseline=baselines)
    assert isinstance(stop.value, KeyboardInterrupt)
    done = stop.value.result
    assert len(done.documents) == first_group and done.stats.model_calls > 0
    for record, attributions in zip(done.documents, done.attributions):
        assert_close(attributions, whole.attributions[record.id], rtol=1e-5, atol=1e-7, what="attributions")
    # the rows done of documents of one length: a view of the call's tensor, no copy of them on top of it
    assert done.attributions.untyped_storage().nbytes() == whole.attributions.numel() * 4
    calls.clear()       # several targets: a record per (document, class), named by its document
    with pytest.raises(fastig.Interrupted, match=f"{first_group} of 4 documents") as stop:
        engine.attribute(texts, n_steps=6, baseline=baselines, target="all")
    ids = [record.id for record in stop.value.result.documents]
    assert len(ids) == 3 * first_group and all(ids.count(i) == 3 for i in set(ids))
    calls.clear()       # n_steps="auto" runs each (document, class) pair alone, and a new engine's first group
    with pytest.raises(fastig.Interrupted, match="0 of 4 documents") as stop:   # is one pair: no document done
        fastig.Engine(models("bert"), tokenizer).attribute(texts, n_steps="auto", max_steps=8, target="all")
    assert stop.value.result is None
    monkeypatch.setattr(fastig.Engine, "_attribute_group", lambda *args: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(fastig.Interrupted, match="0 of 4") as stop:
        engine.attribute(texts, n_steps=6)
    assert stop.value.result is None


def test_an_error_after_some_groups_keeps_the_documents_done(models, tokenizer, monkeypatch):
    """An error in a late group (memory running out, the model failing on one document) is raised as it was,
    with the documents finished before it in its .result and a note saying so; they were lost with it before."""
    engine = fastig.Engine(models("bert"), tokenizer)
    texts = [make_text(n, seed=n) for n in (30, 12, 30, 12, 21)]
    whole = engine.attribute(texts, n_steps=6)
    calls = stop_at_group(monkeypatch, error=RuntimeError("DefaultCPUAllocator: not enough memory"))
    with pytest.raises(RuntimeError, match="not enough memory") as failed:
        engine.attribute(texts, n_steps=6)
    done = failed.value.result
    assert 0 < len(done.documents) < 5 and len({record.id for record in done.documents}) == len(done.documents)
    assert f"{len(done.documents)} of 5 documents were done before the error" in "".join(failed.value.__notes__)
    for record, attributions in zip(done.documents, done.attributions):
        assert_close(attributions, whole.attributions[record.id], rtol=1e-5, atol=1e-7, what="attributions")
        assert record.tokens == whole.documents[record.id].tokens
    calls.clear()
    monkeypatch.setattr(fastig.Engine, "_attribute_group", lambda *args: (_ for _ in ()).throw(ValueError("x")))
    with pytest.raises(ValueError) as failed:     # nothing done: nothing added
        engine.attribute(texts, n_steps=6)
    assert not hasattr(failed.value, "result") and not getattr(failed.value, "__notes__", None)
