"""fp32 fastig equals Captum's LayerIntegratedGradients: the oracle of the engine."""

import pytest
import torch

import fastig
from fastig.quadrature import METHODS
from fastig.reference import MAX_DELTA_DIFF, MAX_REL_L2, captum_attribute, compare

from conftest import FAMILIES, N_LABELS, make_model, make_text

N_STEPS = 12


def assert_agrees_with_captum(engine, text, **kwargs):
    ours = engine.attribute(text, **kwargs)
    theirs = captum_attribute(engine, text, internal_batch_size=5, **kwargs)
    result = compare(ours, theirs)
    assert result.rel_l2 <= MAX_REL_L2, result
    assert result.delta_diff <= MAX_DELTA_DIFF, result
    return ours, result


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("n_words", [1, 7, 97, 300])
@pytest.mark.parametrize("method", METHODS)
def test_rules_lengths_and_families(models, tokenizer, family, n_words, method):
    engine = fastig.Engine(models(family), tokenizer)
    ours, _ = assert_agrees_with_captum(engine, make_text(n_words, seed=n_words), n_steps=N_STEPS, method=method)
    assert ours.attributions.shape == (1, n_words + 2, 32)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("output", ["probs", "logits"])
@pytest.mark.parametrize("target", [None, 0, N_LABELS - 1])
def test_outputs_and_targets(models, tokenizer, family, output, target):
    engine = fastig.Engine(models(family), tokenizer)
    ours, _ = assert_agrees_with_captum(engine, make_text(40, seed=1), n_steps=N_STEPS, output=output, target=target)
    expected_target = int(ours.prediction[0]) if target is None else target
    assert int(ours.target[0]) == expected_target


@pytest.mark.parametrize("family", ["bert", "longformer"])
def test_several_targets_agree_with_one_captum_run_per_document_and_class(models, tokenizer, family):
    """target="all" (and lists of classes by name): each (document, class) record equals Captum's run for it,
    which fastig.reference makes one by one in the records' order (`fastig check --target all`)."""
    engine = fastig.Engine(models(family), tokenizer)
    texts = [make_text(17, seed=4), make_text(30, seed=5)]
    ours, _ = assert_agrees_with_captum(engine, texts, n_steps=N_STEPS, target="all")
    assert ours.target.tolist() == [0, 1, 2] * 2
    named = [["LABEL_2", "LABEL_0"], ["LABEL_1", "LABEL_2"]]
    ours, _ = assert_agrees_with_captum(engine, texts, n_steps=N_STEPS, target=named, method="riemann_middle")
    assert ours.target.tolist() == [2, 0, 1, 2]


def test_a_one_label_model_attributes_its_logit_by_default(tokenizer):
    """A regression head or a cross-encoder's score: its softmax is 1 whatever the input, so the default output
    is the logit (asking for probs is an error, tests/test_bad_inputs.py)."""
    from conftest import MODEL_CLASSES, _config

    config = _config("bert")
    config.num_labels = 1
    torch.manual_seed(0)
    model = MODEL_CLASSES["bert"](config).eval()
    text = make_text(25, seed=3)
    ours, _ = assert_agrees_with_captum(fastig.Engine(model, tokenizer), text, n_steps=N_STEPS)
    with torch.no_grad():
        logit = float(model(**tokenizer(text, return_tensors="pt")).logits[0, 0])
    assert ours.output == "logits" and ours.documents[0].output_at_input == pytest.approx(logit, abs=1e-5)


def _head_model(family: str, **config_values):
    from conftest import MODEL_CLASSES, _config

    config = _config(family)
    for name, value in config_values.items():
        setattr(config, name, value)
    torch.manual_seed(0)
    return MODEL_CLASSES[family](config).eval()


def _pipeline_scores(model, tokenizer, text) -> list[float]:
    """What transformers' text-classification pipeline says the model's probabilities are."""
    from transformers import pipeline

    scores = pipeline("text-classification", model=model, tokenizer=tokenizer, top_k=None)([text])[0]
    return [s["score"] for s in sorted(scores, key=lambda s: model.config.label2id[s["label"]])]


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_a_multi_label_model_attributes_each_labels_sigmoid(tokenizer, family):
    """A multi-label classifier (toxicity, emotions) gives each label its own probability, sigmoid(logit); a
    softmax across its labels is no output of that model. The default and output='probs' attribute the
    sigmoid, as Captum does with a forward that returns it; the records' probabilities are the pipeline's."""
    from captum.attr import LayerIntegratedGradients

    model = _head_model(family, problem_type="multi_label_classification")
    engine = fastig.Engine(model, tokenizer)
    text = make_text(33, seed=6)
    ids = tokenizer(text, return_tensors="pt").input_ids
    baseline_ids = engine.documents(text)[0].baseline_ids[None]
    lig = LayerIntegratedGradients(lambda ids: torch.sigmoid(model(input_ids=ids).logits), engine.layer)
    for output in (None, "probs", "sigmoid"):
        ours = engine.attribute(text, target=1, n_steps=N_STEPS, output=output)
        assert ours.output == "sigmoid"
        theirs, delta = lig.attribute(ids, baselines=baseline_ids, target=1, n_steps=N_STEPS,
                                      method="gausslegendre", return_convergence_delta=True)
        assert float((ours.attributions[0] - theirs[0]).norm() / theirs.norm()) <= MAX_REL_L2
        assert ours.documents[0].delta == pytest.approx(float(delta), abs=MAX_DELTA_DIFF)
    record = ours.documents[0]
    assert record.probs.tolist() == pytest.approx(_pipeline_scores(model, tokenizer, text), abs=1e-5)
    assert engine.probabilities(text)[0].tolist() == pytest.approx(record.probs.tolist(), abs=1e-6)
    assert record.output_at_input == pytest.approx(float(record.probs[1]), abs=1e-6)
    assert float(record.probs.sum()) != pytest.approx(1.0, abs=1e-3)    # not a softmax


def test_records_give_the_pipelines_probabilities_on_one_label_and_regression_heads(tokenizer):
    """A one-label score's probability is its sigmoid, a regression head's is its value: as the pipeline says
    (a softmax of one label was 1.000 in every report)."""
    text = make_text(21, seed=8)
    for values in ({"num_labels": 1}, {"num_labels": 1, "problem_type": "regression"}):
        model = _head_model("bert", **values)
        record = fastig.Engine(model, tokenizer).attribute(text, n_steps=N_STEPS).documents[0]
        assert record.probability == pytest.approx(_pipeline_scores(model, tokenizer, text)[0], abs=1e-5)
        assert record.probability != pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize("baseline", ["unk", "mask"])
def test_other_id_baselines(models, tokenizer, baseline):
    engine = fastig.Engine(models("roberta"), tokenizer)
    assert_agrees_with_captum(engine, make_text(30, seed=2), n_steps=N_STEPS, baseline=baseline)


@pytest.mark.parametrize("family", ["electra", "deberta-v2", "albert", "big-bird"])
def test_embedding_layer_found_for_more_families(tokenizer, family):
    """Documents of 20, 45 and 120 words, each alone and all in one call; on BigBird the first one runs full
    attention (22 tokens) and the others block-sparse, as each does alone on the model as given."""
    model = make_model(family)
    engine = fastig.Engine(model, tokenizer)
    assert type(engine.layer).__name__.endswith("Embeddings")
    texts = [make_text(20, seed=5), make_text(45, seed=3), make_text(120, seed=4)]
    for text in texts:
        assert_agrees_with_captum(engine, text, n_steps=N_STEPS)
    assert_agrees_with_captum(engine, texts, n_steps=N_STEPS)
    if family == "big-bird":
        assert model.bert.attention_type == "block_sparse"


@pytest.mark.parametrize("family", ["bert", "distilbert"])
def test_pairs_of_texts(models, tokenizer, family):
    """Token types where the model embeds them (BERT), not where it has none (DistilBERT, whose forward would
    refuse them)."""
    engine = fastig.Engine(models(family), tokenizer)
    pairs = [(make_text(12, seed=6), make_text(20, seed=7)), (make_text(30, seed=8), make_text(5, seed=9))]
    assert_agrees_with_captum(engine, pairs, n_steps=N_STEPS)
    assert ("token_type_ids" in engine.documents(pairs)[0].model_kwargs) == (family == "bert")


def test_ids_without_tokenizer_equal_texts(models, tokenizer):
    model = models("longformer")
    text = make_text(25, seed=4)
    from_text = fastig.Engine(model, tokenizer).attribute(text, n_steps=N_STEPS)
    from_ids = fastig.Engine(model).attribute(from_text.input_ids, n_steps=N_STEPS)
    assert torch.equal(from_ids.attributions, from_text.attributions)
    assert torch.equal(from_ids.delta, from_text.delta)


@pytest.mark.parametrize("family", ["bert", "longformer", "roberta"])
def test_completeness_improves_with_steps(models, tokenizer, family):
    engine = fastig.Engine(models(family), tokenizer)
    runs = [engine.attribute(make_text(30, seed=5), n_steps=n) for n in (2, 64)]
    gap = abs(float(runs[0].output_at_input[0] - runs[0].output_at_baseline[0]))
    coarse, fine = (abs(float(r.delta[0])) for r in runs)
    assert fine <= 1e-3 * gap and fine < coarse, (coarse, fine, gap)
