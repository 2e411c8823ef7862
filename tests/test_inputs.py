"""What users hand the engine besides a list of texts: a tokenizer's padded output, a column of a table or a
data set, ids; each gives the records the texts give, or is refused before any work."""

import numpy as np
import pytest
import torch

import fastig

from conftest import assert_close, byte_level_bpe, byte_level_text, make_byte_level_model, make_text

N_STEPS = 6


@pytest.fixture(scope="module")
def roberta_tokenizer():
    """The byte-level tokenizer with RoBERTa's template (<s> A </s>, <s> A </s></s> B </s>), as a hub one has."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    bpe = byte_level_bpe(["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    bpe.post_processor = processors.RobertaProcessing(("</s>", bpe.token_to_id("</s>")),
                                                      ("<s>", bpe.token_to_id("<s>")))
    return PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", mask_token="<mask>", cls_token="<s>", sep_token="</s>")


def _same_records(got, expected):
    assert got.tokens == expected.tokens
    assert_close(got.probs, expected.probs, rtol=1e-5, atol=1e-7, what="probabilities")
    for ours, theirs in zip(got.documents, expected.documents):
        assert ours.special_positions == theirs.special_positions
        assert_close(ours.token_scores, theirs.token_scores, rtol=1e-4, atol=1e-6, what="token scores")


@pytest.mark.parametrize("family", ["bert", "roberta"])
@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_a_tokenizers_padded_batch_explains_its_texts(models, tokenizer, roberta_tokenizer, family, padding_side):
    """tokenizer(texts, padding=True, return_tensors="pt") as the inputs: each row without its padding, so
    the prediction and attributions are the texts' own (padding attended changed the probabilities from
    0.64 to 0.45 on the BERT here); pairs keep their token types; lists without tensors too."""
    if family == "bert":
        model, tok, texts = models("bert"), tokenizer, [make_text(4, 1), make_text(11, 2), make_text(7, 3)]
    else:
        tok = roberta_tokenizer
        model, texts = make_byte_level_model("roberta", tok), [byte_level_text(1, 1), byte_level_text(3, 2)]
    engine = fastig.Engine(model, tok)
    expected = engine.attribute(texts, n_steps=N_STEPS)
    tok.padding_side = padding_side
    try:
        batch = tok(texts, padding=True, return_tensors="pt")
        pairs = tok([texts[0]], [texts[1]], padding=True, return_tensors="pt")
    finally:
        tok.padding_side = "right"
    assert bool((batch["attention_mask"] == 0).any())       # the batch holds padding
    _same_records(engine.attribute(batch, n_steps=N_STEPS), expected)
    _same_records(engine.attribute(dict(tok(texts)), n_steps=N_STEPS), expected)     # lists, unpadded
    _same_records(engine.attribute(pairs, n_steps=N_STEPS), engine.attribute([tuple(texts[:2])], n_steps=N_STEPS))


def test_a_baseline_of_ids_padded_as_the_batch_loses_the_same_positions(models, tokenizer):
    engine = fastig.Engine(models("bert"), tokenizer)
    texts = [make_text(3, 1), make_text(8, 2)]
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    ids, attended = batch["input_ids"], batch["attention_mask"].bool()
    template = (ids == tokenizer.cls_token_id) | (ids == tokenizer.sep_token_id)
    baseline = torch.where(template, ids, torch.where(attended, tokenizer.unk_token_id, tokenizer.pad_token_id))
    _same_records(engine.attribute(batch, n_steps=N_STEPS, baseline=baseline),
                  engine.attribute(texts, n_steps=N_STEPS, baseline="unk"))
    with pytest.raises(fastig.BaselineError, match="do not match"):     # a baseline of other rows is not guessed
        engine.attribute(batch, n_steps=N_STEPS, baseline=baseline[:, :-1])


def test_padded_ids_without_their_mask_are_refused_before_any_work(models, tokenizer, monkeypatch):
    engine = fastig.Engine(models("bert"), tokenizer)
    batch = tokenizer([make_text(3, 1), make_text(8, 2)], padding=True, return_tensors="pt")
    monkeypatch.setattr(fastig.Engine, "_attribute_group", lambda *args: pytest.fail("work was done"))
    for inputs in (batch["input_ids"], {"input_ids": batch["input_ids"]}):
        with pytest.raises(fastig.InputError, match=r"row 0 holds the padding token \(id 0\).*attention_mask"):
            engine.attribute(inputs, n_steps=N_STEPS)
    with pytest.raises(fastig.InputError, match="'input_ids'; it holds text"):
        engine.attribute({"text": ["a film"]}, n_steps=N_STEPS)
    with pytest.raises(fastig.InputError, match="attention_mask of shape"):
        engine.attribute({"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"][:, :4]})


def test_a_column_of_texts_in_any_container_is_its_list(models, tokenizer):
    """A pandas column, a numpy array, a data set's column and a generator are the list of their texts; a
    whole table is refused, naming the column to give (its iteration would give the column names)."""
    import datasets
    import pandas as pd

    engine = fastig.Engine(models("distilbert"), tokenizer)
    texts = [make_text(5, 1), make_text(9, 2)]
    expected = engine.attribute(texts, n_steps=N_STEPS)
    table = pd.DataFrame({"text": texts})
    for column in (table["text"], np.array(texts), datasets.Dataset.from_pandas(table)["text"], iter(texts)):
        _same_records(engine.attribute(column, n_steps=N_STEPS), expected)
    with pytest.raises(fastig.InputError, match=r"a table\): give its column of texts"):
        engine.attribute(table, n_steps=N_STEPS)
    ids = np.stack([d.input_ids.numpy() for d in expected.documents[:1]])     # ids as a numpy array
    _same_records(engine.attribute(ids, n_steps=N_STEPS), engine.attribute(texts[:1], n_steps=N_STEPS))


def test_ids_as_python_lists_are_their_documents(models, tokenizer, roberta_tokenizer):
    """tokenizer.encode(text) (a list of ints) and a list of such lists, of any lengths, are ids as a tensor is:
    the texts' records. They were refused as texts ("texts[0] is of type int"); a list mixing ids and texts
    still is, and max_length is refused for them as for tensors."""
    for model, tok, texts in ((models("bert"), tokenizer, [make_text(4, 1), make_text(9, 2)]),
                              (make_byte_level_model("roberta", roberta_tokenizer), roberta_tokenizer,
                               [byte_level_text(1, 1), byte_level_text(3, 2)])):
        engine = fastig.Engine(model, tok)
        expected = engine.attribute(texts, n_steps=N_STEPS)
        encoded = [tok.encode(text) for text in texts]
        assert len(encoded[0]) != len(encoded[1])
        _same_records(engine.attribute(encoded, n_steps=N_STEPS), expected)
        _same_records(engine.attribute(encoded[1], n_steps=N_STEPS), engine.attribute(texts[1:], n_steps=N_STEPS))
    engine = fastig.Engine(models("bert"), tokenizer)
    with pytest.raises(fastig.InputError, match=r"texts\[1\] is of type int"):
        engine.attribute([make_text(3, 1), 5], n_steps=N_STEPS)
    with pytest.raises(fastig.InputError, match="max_length=3 cuts texts"):
        engine.attribute(tokenizer.encode(make_text(5, 1)), n_steps=N_STEPS, max_length=3)


def test_the_model_may_be_its_folder_or_its_pipeline(tokenizer, tmp_path):
    """Engine("folder or hub name") loads it as the commands do, Engine(pipeline) takes the pipeline's model
    and tokenizer, Engine(DataParallel(model)) and Engine(torch.compile(model)) its module; the records are those of the model itself. Anything
    else is refused, naming what is (a module without a config failed at its first use)."""
    import transformers

    from conftest import make_model

    model = make_model("bert")
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    text = make_text(7)
    expected = fastig.Engine(model, tokenizer).attribute(text, n_steps=N_STEPS)
    pipeline = transformers.pipeline("text-classification", model=model, tokenizer=tokenizer)
    for engine in (fastig.Engine(str(tmp_path / "model")), fastig.Engine(tmp_path / "model"), fastig.Engine(pipeline),
                   fastig.Engine(model, str(tmp_path / "model"))):
        _same_records(engine.attribute(text, n_steps=N_STEPS), expected)
    _same_records(fastig.Engine(torch.nn.DataParallel(model), tokenizer).attribute(text, n_steps=N_STEPS), expected)
    # torch.compile(model): the module it wraps (compiled whole, it recompiled at each new shape, 200x slower)
    compiled = fastig.Engine(torch.compile(model), tokenizer)
    assert compiled.model is model and "layer='bert.embeddings'" in repr(compiled)
    _same_records(compiled.attribute(text, n_steps=N_STEPS), expected)
    with pytest.raises(fastig.ModelLoadError, match="model of type int: give a transformers sequence classifier"):
        fastig.Engine(42)
    with pytest.raises(fastig.ModelLoadError, match="model of type Linear has no .config: give a transformers"):
        fastig.Engine(torch.nn.Linear(2, 2))
    with pytest.raises(fastig.ModelLoadError, match="tokenizer '/nowhere': no such folder"):
        fastig.Engine(model, "/nowhere")
