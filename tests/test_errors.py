"""Bad input raises the right FastIGError, with a message that names the argument."""

import pytest
import torch

import fastig
from fastig import (BaselineError, EmptyTextError, FastIGError, InputError, LayerNotFoundError, MethodError,
                    ModelLoadError, TargetError)


@pytest.fixture()
def engine(models, tokenizer):
    return fastig.Engine(models("bert"), tokenizer)


@pytest.mark.parametrize("kwargs, error, fragment", [
    (dict(texts_or_ids=""), EmptyTextError, "holds no token"),
    (dict(texts_or_ids="   "), EmptyTextError, "holds no token"),
    (dict(texts_or_ids=[]), EmptyTextError, "no text given"),
    (dict(texts_or_ids=["good", 3]), InputError, r"texts\[1\] is of type int"),
    (dict(texts_or_ids=["good", float("nan")]), InputError, r"texts\[1\] is missing \(nan: an empty cell"),
    (dict(texts_or_ids=torch.tensor([[2, 7, 8, 3]]), max_length=2), InputError,
     r"max_length=2 cuts texts; ids and a tokenizer's output are explained as given"),
    (dict(texts_or_ids=["good", None]), InputError, r"texts\[1\] is missing \(None: "),
    (dict(texts_or_ids=torch.zeros(2, 0, dtype=torch.long)), EmptyTextError, "L >= 1"),
    (dict(texts_or_ids="good", target=3), TargetError, "target=3 is out of range"),
    (dict(texts_or_ids="good", target=-1), TargetError, "target=-1 is out of range"),
    (dict(texts_or_ids=["good", "bad"], target=[0]), TargetError, "1 entries for 2 documents"),
    (dict(texts_or_ids="good", n_steps=0), MethodError, "n_steps"),
    (dict(texts_or_ids="good", method="simpson"), MethodError, "method='simpson' is unknown"),
    (dict(texts_or_ids="good", baseline="blank"), BaselineError, "baseline='blank' is unknown"),
    (dict(texts_or_ids="good film", baseline=torch.tensor([2, 0, 3])), BaselineError, "do not match"),
    (dict(texts_or_ids="good film", baseline=torch.zeros(3, 32)), BaselineError, "does not match the layer output"),
    (dict(texts_or_ids="good", output="softmax"), InputError, "output='softmax' is unknown"),
    (dict(texts_or_ids="good", chunk_size=0), InputError, "chunk_size=0"),
])
def test_bad_attribute_arguments(engine, kwargs, error, fragment):
    with pytest.raises(error, match=fragment) as info:
        engine.attribute(**kwargs)
    assert isinstance(info.value, FastIGError)


def test_texts_without_tokenizer(models):
    with pytest.raises(InputError, match="need a tokenizer"):
        fastig.Engine(models("bert")).attribute("good film")


def test_a_missing_model_folder_is_a_model_load_error(tmp_path):
    with pytest.raises(ModelLoadError, match="no-such-model': no such folder"):
        fastig.load_classifier(str(tmp_path / "no-such-model"))


def test_layer_not_found(models, tokenizer):
    with pytest.raises(LayerNotFoundError, match="bert.embedings"):
        fastig.Engine(models("bert"), tokenizer, layer="bert.embedings")


def test_a_model_whose_input_embeddings_transformers_cannot_find(tokenizer, monkeypatch):
    """transformers' default get_input_embeddings raises NotImplementedError for models it cannot handle
    (CanineModel's characters): a LayerNotFoundError asking for layer=."""
    from conftest import make_model

    model = make_model("bert")
    monkeypatch.setattr(model, "get_input_embeddings", lambda: (_ for _ in ()).throw(NotImplementedError("no")))
    with pytest.raises(LayerNotFoundError, match="has no input embeddings; pass layer="):
        fastig.Engine(model, tokenizer)


CLASSIFIERS = "fastig explains sequence classifiers"


@pytest.mark.parametrize("head, said", [
    ("TokenClassification", rf"BertForTokenClassification gives logits of shape \[\d+, \d+, 3\]: {CLASSIFIERS}"),
    ("MaskedLM", "BertForMaskedLM is a language model .*: give a sequence classifier; for generated text use "
                 "fastig.llm"),
    ("QuestionAnswering", f"BertForQuestionAnswering gives a QuestionAnsweringModelOutput without logits: {CLASSIFIERS}"),
    ("Model", f"BertModel gives a BaseModelOutputWithPoolingAndCrossAttentions without logits: {CLASSIFIERS}")])
def test_a_model_that_is_no_sequence_classifier_is_named(tokenizer, head, said):
    """AutoModel for AutoModelForSequenceClassification, or another head, failed deep in an index or an
    attribute of its output: a ModelLoadError names the class, what it gives and what fastig explains; a
    language model (a fill-mask pipeline's) as soon as it is given to Engine, not at its first call."""
    import transformers

    from conftest import COMMON

    config = transformers.BertConfig(**{**COMMON, "num_labels": 2 if head == "QuestionAnswering" else 3})
    model = getattr(transformers, f"Bert{'' if head == 'Model' else 'For'}{head}")(config).eval()
    with pytest.raises(ModelLoadError, match=said):
        engine = fastig.Engine(model, tokenizer)
        assert head != "MaskedLM", "a language model was taken"
        engine.attribute("good film", n_steps=2)


def test_layer_without_token_output(models, tokenizer):
    engine = fastig.Engine(models("bert"), tokenizer, layer="bert.pooler")
    with pytest.raises(LayerNotFoundError, match=r"\[batch, length, hidden\]"):
        engine.attribute("good film", n_steps=2)


def test_dotted_layer_name_is_used(models, tokenizer):
    engine = fastig.Engine(models("bert"), tokenizer, layer="bert.encoder.layer.0")
    result = engine.attribute("good film", n_steps=16)
    assert result.attributions.shape == (1, 4, 32)
    assert abs(float(result.delta[0])) < 1e-2


def test_unknown_precision(models, tokenizer):
    with pytest.raises(InputError, match="precision='fp8'"):
        fastig.Engine(models("bert"), tokenizer, precision="fp8")


def test_captum_reference_needs_id_baselines(models, tokenizer):
    from fastig.reference import captum_attribute

    with pytest.raises(BaselineError, match="takes baselines as ids"):
        captum_attribute(fastig.Engine(models("bert"), tokenizer), "good film", baseline="zeros")
