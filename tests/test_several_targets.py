"""Several targets in one sweep: each (document, target) pair's result is the one its own run gives,
and each step's forward is shared by the document's targets."""

import pytest
import torch
from conftest import N_LABELS, assert_close, make_model, make_text, stop_at_group

import fastig
from fastig.errors import TargetError

RULE = dict(n_steps=12, method="gausslegendre")


def _texts():
    return [make_text(9, seed=1), make_text(14, seed=2)]      # odd lengths, packed into one group


def _same_as_alone(result, engine, texts, targets, **rule):
    """Pair i of result (document-major) against the document run alone with that one target."""
    pairs = [(d, t) for d, row in enumerate(targets) for t in row]
    assert [record.target for record in result.documents] == [t for _, t in pairs]
    for i, (d, t) in enumerate(pairs):
        alone = engine.attribute(texts[d], target=t, **rule)
        expected, actual = alone.documents[0], result.documents[i]
        assert_close(result.attributions[i][:len(expected.tokens)], alone.attributions[0], rtol=1e-4, atol=1e-7,
                     what=f"document {d}, target {t}")
        assert actual.delta == pytest.approx(expected.delta, abs=1e-6)
        assert actual.output_at_input == pytest.approx(expected.output_at_input, abs=1e-6)
        assert actual.tokens == expected.tokens and actual.prediction == expected.prediction
        assert actual.evaluations == expected.evaluations


@pytest.mark.parametrize("family", ["bert", "longformer", "distilbert", "electra"])
def test_every_class_in_one_sweep_equals_one_run_per_class(family, tokenizer):
    engine = fastig.Engine(make_model(family), tokenizer, precision="fp32")
    texts = _texts()
    result = engine.attribute(texts, target="all", **RULE)
    assert len(result.documents) == len(texts) * N_LABELS
    _same_as_alone(result, engine, texts, [list(range(N_LABELS))] * len(texts), **RULE)


@pytest.mark.parametrize("chunk_size", [3, 5, None])
def test_chosen_classes_per_document_in_any_chunking(chunk_size, tokenizer):
    """A call may end inside a document's steps or span two documents; the pairs stay apart."""
    engine = fastig.Engine(make_model("roberta"), tokenizer, precision="fp32")
    texts, targets = _texts(), [[2, 0], [1, 2]]
    result = engine.attribute(texts, target=targets, chunk_size=chunk_size, **RULE)
    _same_as_alone(result, engine, texts, targets, **RULE)
    tensor_targets = engine.attribute(texts, target=torch.tensor(targets), chunk_size=chunk_size, **RULE)
    for a, b in zip(tensor_targets.attributions, result.attributions):     # call sizes may differ: rounding
        assert_close(a, b, rtol=1e-5, atol=1e-8, what="targets as a tensor")


def test_each_step_runs_the_model_once_for_all_targets(tokenizer):
    model = make_model("bert")
    forwards = []
    model.classifier.register_forward_hook(lambda module, args, out: forwards.append(len(out)))
    engine = fastig.Engine(model, tokenizer, precision="fp32")
    engine.attribute(_texts(), target=0, chunk_size=4, **RULE)
    one_target = list(forwards)
    forwards.clear()
    engine.attribute(_texts(), target="all", chunk_size=4, **RULE)
    assert forwards == one_target      # the same calls of the same sizes, not one sweep per class


def test_the_default_call_takes_several_targets(tokenizer):
    """Each pair meets the accuracy on its own, as its own default call does."""
    engine = fastig.Engine(make_model("bert", seed=3), tokenizer)
    texts, targets = _texts(), [[0, 1], [2, 0]]
    result = engine.attribute(texts, target=targets)
    assert all(record.tolerance_met for record in result.documents)
    _same_as_alone(result, engine, texts, targets)


@pytest.mark.parametrize("rule", [RULE, {}, {"n_steps": "auto"}], ids=["fixed", "default", "auto"])
@pytest.mark.parametrize("same_length", [False, True])
def test_documents_of_other_numbers_of_targets_in_one_call(rule, same_length, tokenizer):
    """A multi-label model's predicted labels are 1, 2 or 3 a document: one list per document of any length,
    each pair as its own run gives it, records document after document, the model run once a step for all of a
    document's targets (before, lists had to be of one length: the documents had to be split by hand)."""
    engine = fastig.Engine(make_model("bert", seed=3), tokenizer, precision="fp32" if rule else "auto")
    texts = [make_text(11, seed=s) for s in (1, 2, 3, 4)] if same_length else \
        [make_text(9, seed=1), make_text(14, seed=2), make_text(6, seed=3), make_text(12, seed=4)]
    targets = [[2, 0], [1], [0, 1, 2], [1]]
    result = engine.attribute(texts, target=targets, **rule)
    _same_as_alone(result, engine, texts, targets, **rule)
    assert isinstance(result.attributions, torch.Tensor) == same_length


def test_an_interrupt_amid_documents_of_other_numbers_of_targets_keeps_whole_ones(tokenizer, monkeypatch):
    """The documents done before a Ctrl-C are kept whole, every one of their targets, named by their index."""
    engine = fastig.Engine(make_model("bert", seed=3), tokenizer, precision="fp32")
    texts, targets = [make_text(30, seed=1), make_text(6, seed=2), make_text(18, seed=3)], [[2, 0], [1], [0, 1, 2]]
    stop_at_group(monkeypatch, 3)     # longest first, as many targets apart: texts 0 and 2 are done
    with pytest.raises(fastig.Interrupted) as stopped:
        engine.attribute(texts, target=targets, **RULE)
    kept = stopped.value.result
    assert [(record.id, record.target) for record in kept.documents] == [(0, 2), (0, 0), (2, 0), (2, 1), (2, 2)]
    assert kept.stats.token_steps_per_s > 0


@pytest.mark.parametrize("target, message", [
    ([[0, 1], []], "1 or more classes"),
    ([[0, None], [1, 2]], "1 or more classes"),
    ([[0, 3], [1, 2]], "out of range"),
    ([[0, 1]], "entries for 2 documents"),
    ("every", "'all'"),
    ([[0.5, 1], [1, 2]], "not a class index"),
])
def test_bad_several_targets_name_what_is_allowed(target, message, tokenizer):
    engine = fastig.Engine(make_model("bert"), tokenizer, precision="fp32")
    with pytest.raises(TargetError, match=message):
        engine.attribute(_texts(), target=target, **RULE)


def test_the_default_call_shares_each_documents_forwards(tokenizer):
    model = make_model("bert", seed=3)
    forwards = []
    model.classifier.register_forward_hook(lambda module, args, out: forwards.append(len(out)))
    engine = fastig.Engine(model, tokenizer)
    texts = _texts()
    engine.attribute(texts, target="all")
    shared = sum(forwards)
    forwards.clear()
    for t in range(N_LABELS):
        engine.attribute(texts, target=t)
    assert shared < 0.6 * sum(forwards)       # rows through the model: one document's pairs share them
