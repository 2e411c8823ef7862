"""fastig.captum.LayerIntegratedGradients returns what Captum's class returns, and takes fastig's path doing it."""

from contextlib import nullcontext

import pytest
import torch
from captum.attr import LayerIntegratedGradients as CaptumLIG
from torch import nn

from fastig.captum import LayerIntegratedGradients
from fastig.quadrature import METHODS

from conftest import assert_close


class Bag(nn.Module):
    """ids [N, L] (+ a second id tensor, a mask and a scale) -> logits [N, 3]: a toy text classifier."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.words, self.tags = nn.Embedding(30, 8), nn.Embedding(5, 8)
        self.hidden, self.out = nn.Linear(8, 16), nn.Linear(16, 3)

    def forward(self, ids, tags=None, mask=None, scale: float = 1.0):
        x = self.words(ids) + (self.tags(tags) if tags is not None else 0)
        x = torch.tanh(x) * (mask[..., None] if mask is not None else 1)
        return self.out(torch.tanh(self.hidden(x.mean(1)))) * scale


class Grid(nn.Module):
    """features [N, 4] -> outputs [N, 2, 3]: targets are tuples; the hooked layer's output is [N, 12]."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.first, self.second = nn.Linear(4, 12), nn.Linear(12, 6)

    def forward(self, features):
        return self.second(torch.sigmoid(self.first(features))).view(-1, 2, 3)


def _both(forward, layer, multiply_by_inputs=True):
    return (CaptumLIG(forward, layer, multiply_by_inputs=multiply_by_inputs),
            LayerIntegratedGradients(forward, layer, multiply_by_inputs=multiply_by_inputs))


def _same(expected, actual, what="attributions"):
    if isinstance(expected, (tuple, list)):
        assert type(actual) is type(expected) and len(actual) == len(expected), what
        for i, (e, a) in enumerate(zip(expected, actual)):
            _same(e, a, f"{what}[{i}]")
        return
    assert actual.dtype == expected.dtype and actual.device == expected.device, what
    # A delta is rounding-sized next to the outputs it is the difference of, which are O(1) here.
    scale = 1.0 if what == "delta" else float(expected.abs().max()) or 1.0
    assert_close(actual, expected, rtol=1e-4, atol=1e-5 * scale, what=what)


def _ids(n, length=7, seed=0):
    return torch.randint(1, 30, (n, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("examples", [1, 4])
@pytest.mark.parametrize("internal_batch_size", [None, 1, 3])
def test_every_rule_batch_and_chunking_equals_captum(method, examples, internal_batch_size):
    model = Bag()
    captum, fast = _both(model, model.words)
    ids = _ids(examples)
    kwargs = dict(target=1, n_steps=12, method=method, internal_batch_size=internal_batch_size,
                  return_convergence_delta=True)
    too_small = internal_batch_size is not None and internal_batch_size < examples
    with _warns_if(too_small):      # Captum's warning, and then its chunking: one step per call
        expected, expected_delta = captum.attribute(ids, **kwargs)
    with _warns_if(too_small):
        actual, delta = fast.attribute(ids, **kwargs)
    _same(expected, actual)
    _same(expected_delta, delta, "delta")
    assert fast.last_path == "fastig" and fast.fast_calls == 1 and fast.fallback_calls == 0


def _warns_if(condition: bool):
    return pytest.warns(UserWarning, match="Internal batch size") if condition else nullcontext()


TARGETS = [0, [0, 2, 1], torch.tensor([2, 0, 1]), torch.tensor(1)]


@pytest.mark.parametrize("target", TARGETS, ids=["int", "list", "tensor", "scalar-tensor"])
@pytest.mark.parametrize("baselines", [None, 3, "tensor"])
def test_targets_baselines_and_additional_arguments_of_any_kind(target, baselines):
    model = Bag(seed=2)
    captum, fast = _both(model, model.words)
    ids, tags = _ids(3, seed=1), torch.randint(0, 5, (3, 7))
    mask = torch.ones(3, 7)
    mask[1, 5:] = 0
    if baselines == "tensor":
        baselines = (torch.zeros_like(ids), torch.ones_like(tags))
    elif baselines is not None:
        baselines = (baselines, 0)
    kwargs = dict(baselines=baselines, target=target, additional_forward_args=(mask, 0.5), n_steps=10,
                  return_convergence_delta=True)
    expected, expected_delta = captum.attribute((ids, tags), **kwargs)
    actual, delta = fast.attribute((ids, tags), **kwargs)
    _same(expected, actual)
    _same(expected_delta, delta, "delta")
    assert fast.last_path == "fastig"


@pytest.mark.parametrize("target", [(1, 2), [(0, 1), (1, 2)]], ids=["tuple", "list-of-tuples"])
def test_a_two_dimensional_layer_and_tuple_targets(target):
    model = Grid()
    captum, fast = _both(model, model.first)
    features = torch.randn(2, 4, generator=torch.Generator().manual_seed(3))
    expected = captum.attribute(features, baselines=0.5, target=target, n_steps=20)
    actual = fast.attribute(features, baselines=0.5, target=target, n_steps=20)
    _same(expected, actual)
    assert actual.shape == (2, 12) and fast.last_path == "fastig"


def test_multiply_by_inputs_false_gives_the_integrated_gradient():
    model = Bag()
    captum, fast = _both(model, model.words, multiply_by_inputs=False)
    ids = _ids(2)
    expected = captum.attribute(ids, target=2, n_steps=8, return_convergence_delta=True)
    actual = fast.attribute(ids, target=2, n_steps=8, return_convergence_delta=True)
    _same(expected, actual)
    assert fast.multiplies_by_inputs is False and fast.has_convergence_delta()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("multiply_by_inputs", [True, False])
def test_a_half_precision_model_gets_captums_float32_result(dtype, multiply_by_inputs):
    """Captum sums a half model's gradients with float32 step sizes, so its attributions and delta are
    float32; fastig's rounded them back to the layer's dtype (a bf16 delta of exactly 0 where Captum's was
    2.5e-3 on a BERT). Values within half precision's rounding of the path points (Captum forms them in the
    layer's dtype, fastig in fp32)."""
    model = Bag().to(dtype)
    captum, fast = _both(model, model.words, multiply_by_inputs)
    ids = _ids(2)
    expected = captum.attribute(ids, target=1, n_steps=8, return_convergence_delta=True)
    actual = fast.attribute(ids, target=1, n_steps=8, return_convergence_delta=True)
    assert fast.last_path == "fastig"
    # Measured: attributions within 3.6e-3 of their largest, deltas (differences of O(1) outputs the half
    # model rounds) within 4.7e-4.
    for e, a, what, atol in zip(expected, actual, ("attributions", "delta"), (1e-2 * float(expected[0].abs().max()),
                                                                                2e-3)):
        assert a.dtype == e.dtype == torch.float32, what
        assert_close(a, e, rtol=0, atol=atol, what=what)


@pytest.mark.parametrize("case", ["layer list", "layer input", "grad_kwargs"])
def test_what_the_fast_path_does_not_cover_is_captums_result_and_counted(case, caplog):
    model = Bag()
    layer = [model.words, model.tags] if case == "layer list" else model.hidden if case == "layer input" \
        else model.words
    captum, fast = _both(model, layer)
    ids, tags = _ids(2), torch.randint(0, 5, (2, 7))
    kwargs = dict(target=0, n_steps=6, attribute_to_layer_input=case == "layer input",
                  grad_kwargs={"retain_graph": True} if case == "grad_kwargs" else None)
    expected = captum.attribute((ids, tags), **kwargs)
    with caplog.at_level("DEBUG", logger="fastig.captum"):
        actual = fast.attribute((ids, tags), **kwargs)
    _same(expected, actual)
    assert fast.last_path == "captum" and fast.fallback_calls == 1 and fast.fast_calls == 0
    assert fast.last_fallback_reason and fast.last_fallback_reason in caplog.text


def test_compute_convergence_delta_is_captums():
    model = Bag()
    _, fast = _both(model, model.words)
    ids = _ids(3)
    attributions, delta = fast.attribute(ids, target=1, n_steps=16, return_convergence_delta=True)
    again = fast.compute_convergence_delta((attributions,), torch.zeros_like(ids), ids, target=1)
    _same(delta, again, "delta")


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_precision_and_memory_budget_are_opt_in(precision):
    model = Bag()
    captum, fast = _both(model, model.words)
    ids = _ids(4)
    expected = captum.attribute(ids, target=1, n_steps=16)
    actual = fast.attribute(ids, target=1, n_steps=16, precision=precision, memory_budget="2GB")
    assert fast.last_stats.precision == precision and fast.last_stats.memory.memory_budget_bytes == 2 * 10**9
    assert actual.dtype == torch.float32
    assert torch.corrcoef(torch.stack([actual.sum(-1).flatten(), expected.sum(-1).flatten()]))[0, 1] > 0.99
    fast.attribute(ids, target=1, n_steps=16)
    assert fast.last_stats.precision == "fp32" and fast.last_stats.chunk_size == [4 * 16]
    assert fast.last_stats.model_calls == 1


def _padded_classifier_call(model, tokenizer):
    """(Captum's class, fastig's, ids, attribute's arguments) for two padded texts of a Hugging Face classifier
    whose forward takes the attention mask, as tools call it."""
    from conftest import make_text

    from fastig.models import find_layer

    encoded = tokenizer([make_text(12, seed=1), make_text(5, seed=2)], padding=True, return_tensors="pt")

    def forward(input_ids, attention_mask):
        return model(input_ids=input_ids, attention_mask=attention_mask).logits.softmax(-1)

    captum, fast = _both(forward, find_layer(model))
    baselines = torch.full_like(encoded["input_ids"], tokenizer.pad_token_id)
    kwargs = dict(baselines=baselines, additional_forward_args=(encoded["attention_mask"],), target=[0, 2],
                  n_steps=20, internal_batch_size=8, return_convergence_delta=True)
    return captum, fast, encoded["input_ids"], kwargs


@pytest.mark.parametrize("family", ["bert", "roberta", "distilbert", "longformer"])
def test_hugging_face_classifiers_with_attention_mask(models, tokenizer, family):
    captum, fast, ids, kwargs = _padded_classifier_call(models(family), tokenizer)
    expected, expected_delta = captum.attribute(ids, **kwargs)
    actual, delta = fast.attribute(ids, **kwargs)
    _same(expected, actual)
    _same(expected_delta, delta, "delta")
    assert fast.last_path == "fastig"


@pytest.mark.parametrize("family", ["bert", "longformer"])
def test_a_callers_autocast_runs_the_forward_as_in_captum(models, tokenizer, family):
    """Under a caller's bf16 autocast Captum's forward runs in bf16; so does the fast path's, its sums fp32 (they
    failed there: the accumulation's matmul gave bf16 into fp32)."""
    captum, fast, ids, kwargs = _padded_classifier_call(models(family), tokenizer)
    fp32 = captum.attribute(ids, **kwargs)[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected, expected_delta = captum.attribute(ids, **kwargs)
        actual, delta = fast.attribute(ids, **kwargs)
    assert fast.last_path == "fastig" and actual.dtype == torch.float32
    # Measured: bf16 autocast 1.2e-2 and 2.2e-2 from fp32 (relative L2), the fast path 6e-4 and 9e-4 from
    # Captum in it (bf16 rounding of rows in other calls), deltas within 5e-4.
    assert float((expected - fp32).norm() / fp32.norm()) > 5e-3      # the forward did run in bf16
    assert float((actual - expected).norm() / expected.norm()) < 3e-3
    assert_close(delta, expected_delta, rtol=0, atol=2e-3, what="delta")


def test_errors_are_captums():
    model = Bag()
    captum, fast = _both(model, model.words)
    for kwargs in (dict(method="simpson"), dict(baselines=torch.zeros(2, 5, dtype=torch.long))):
        with pytest.raises(AssertionError) as expected:
            captum.attribute(_ids(2), target=0, **kwargs)
        with pytest.raises(AssertionError) as actual:
            fast.attribute(_ids(2), target=0, **kwargs)
        assert str(actual.value) == str(expected.value)


def test_patch_captum_reaches_every_binding_and_unpatch_restores_them():
    import captum.attr
    import captum.attr._core.layer.layer_integrated_gradients as defining
    import transformers_interpret.attributions as tool      # imported the name before the patch

    import fastig
    original = captum.attr.LayerIntegratedGradients
    fastig.patch_captum()
    try:
        assert captum.attr.LayerIntegratedGradients is LayerIntegratedGradients
        assert defining.LayerIntegratedGradients is LayerIntegratedGradients
        assert tool.LayerIntegratedGradients is LayerIntegratedGradients
        from captum.attr import LayerIntegratedGradients as imported_now
        assert imported_now is LayerIntegratedGradients and issubclass(imported_now, original)
    finally:
        fastig.unpatch_captum()
    assert captum.attr.LayerIntegratedGradients is original and tool.LayerIntegratedGradients is original
    assert defining.LayerIntegratedGradients is original
    with fastig.patch_captum():
        assert captum.attr.LayerIntegratedGradients is LayerIntegratedGradients
    assert captum.attr.LayerIntegratedGradients is original


def test_an_unchanged_tool_gets_the_same_word_attributions_through_fastig(models, tokenizer):
    """transformers-interpret's SequenceClassificationExplainer calls captum.attr.LayerIntegratedGradients."""
    from transformers_interpret import SequenceClassificationExplainer

    import fastig
    model, text = models("bert"), "the good movie w1 w2 bad plot & w7"
    expected = SequenceClassificationExplainer(model, tokenizer)(text, n_steps=30)
    with fastig.patch_captum():
        explainer = SequenceClassificationExplainer(model, tokenizer)
        actual = explainer(text, n_steps=30)
    lig = explainer.attributions.lig
    assert isinstance(lig, LayerIntegratedGradients) and lig.last_path == "fastig" and lig.fast_calls >= 1
    assert [word for word, _ in actual] == [word for word, _ in expected]
    assert_close(torch.tensor([score for _, score in actual]), torch.tensor([score for _, score in expected]),
                 rtol=1e-4, atol=1e-6, what="word attributions")
