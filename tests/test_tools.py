"""Under the tools people run (transformers-interpret, Captum's LLMGradientAttribution), fastig's drop-in
class gives what Captum gives: the attributions, and what the tools read from their own forward functions."""

import pytest
import torch
from captum.attr import LayerIntegratedGradients as CaptumLayerIntegratedGradients
from conftest import _config, assert_close
from torch import nn
from transformers import BertForTokenClassification

import fastig
from fastig.captum import LayerIntegratedGradients

TEXT = "the good movie w1 w2 bad plot & w7"


class Recorder(nn.Module):
    """A bag-of-embeddings classifier whose forward records each call: (rows, gradients enabled, ids)."""

    def __init__(self, columns: int = 3):
        super().__init__()
        torch.manual_seed(0)
        self.words = nn.Embedding(30, 8)
        self.head = nn.Linear(8, columns)
        self.calls = []

    def forward(self, ids):
        self.calls.append((len(ids), torch.is_grad_enabled(), ids.clone()))
        return self.head(torch.tanh(self.words(ids)).mean(1))


def _ids(examples: int) -> torch.Tensor:
    return torch.randint(1, 30, (examples, 6), generator=torch.Generator().manual_seed(examples))


@pytest.mark.parametrize("return_convergence_delta", [True, False])
@pytest.mark.parametrize("internal_batch_size", [None, 4])
def test_the_forward_function_is_called_as_captum_calls_it(return_convergence_delta, internal_batch_size):
    """The same calls in the same order, with or without gradients, of the same sizes, over the same
    rows; the last one at the inputs when Captum's is (return_convergence_delta), so state a tool keeps
    from it is Captum's. (Within the path's calls fastig groups the rows by example, Captum by step.)"""
    ids = _ids(2)
    seen = {}
    for name, cls in (("captum", CaptumLayerIntegratedGradients), ("fastig", LayerIntegratedGradients)):
        model = Recorder()
        lig = cls(model, model.words)
        lig.attribute(ids, target=1, n_steps=7, internal_batch_size=internal_batch_size,
                      return_convergence_delta=return_convergence_delta)
        seen[name] = model.calls
        if name == "fastig":
            assert lig.last_path == "fastig"
    assert [call[:2] for call in seen["fastig"]] == [call[:2] for call in seen["captum"]]
    def path_rows(calls):
        rows = torch.cat([ids for _, with_gradients, ids in calls if with_gradients])
        return sorted(map(tuple, rows.tolist()))
    assert path_rows(seen["fastig"]) == path_rows(seen["captum"])
    if return_convergence_delta:
        assert torch.equal(seen["fastig"][-1][2], ids) and torch.equal(seen["captum"][-1][2], ids)
        assert not seen["fastig"][-1][1]


def test_a_forward_returning_one_column_and_no_target_takes_the_fast_path():
    """Captum's own test models return [N, 1] and are called with target=None."""
    model = Recorder(columns=1)
    ids = _ids(3)
    expected, expected_delta = CaptumLayerIntegratedGradients(model, model.words).attribute(
        ids, n_steps=9, return_convergence_delta=True)
    lig = LayerIntegratedGradients(model, model.words)
    actual, delta = lig.attribute(ids, n_steps=9, return_convergence_delta=True)
    assert lig.last_path == "fastig", lig.last_fallback_reason
    assert_close(actual, expected, rtol=1e-4, atol=1e-7, what="attributions")
    assert_close(delta, expected_delta, rtol=1e-3, atol=1e-6, what="delta")


def test_a_float64_model_is_integrated_in_float64_as_captum_does():
    model = Recorder().double()
    ids = _ids(2)
    expected = CaptumLayerIntegratedGradients(model, model.words).attribute(ids, target=0, n_steps=9)
    lig = LayerIntegratedGradients(model, model.words)
    actual = lig.attribute(ids, target=0, n_steps=9)
    assert actual.dtype == torch.float64 and lig.last_path == "captum" and "float64" in lig.last_fallback_reason
    assert torch.equal(actual, expected)


def _explain(explainer_class, model, tokenizer, **call):
    """The explainer's output and the explainer, with Captum and with fastig under patch_captum()."""
    expected_explainer = explainer_class(model, tokenizer)
    expected = expected_explainer(TEXT, **call)
    with fastig.patch_captum():
        actual_explainer = explainer_class(model, tokenizer)
        actual = actual_explainer(TEXT, **call)
    attributions = actual_explainer.attributions
    attributions = attributions.values() if isinstance(attributions, dict) else \
        attributions if isinstance(attributions, list) else [attributions]    # per label, per token, one
    for lig in [a.lig for a in attributions]:
        assert isinstance(lig, LayerIntegratedGradients) and lig.last_path == "fastig", lig.last_fallback_reason
    return expected, expected_explainer, actual, actual_explainer


def _scores(word_attributions) -> torch.Tensor:
    return torch.tensor([score for _, score in word_attributions])


def test_transformers_interpret_sequence_explainer_reports_captums_prediction(models, tokenizer):
    from transformers_interpret import SequenceClassificationExplainer

    expected, want, actual, got = _explain(SequenceClassificationExplainer, models("bert"), tokenizer, n_steps=30)
    assert [w for w, _ in actual] == [w for w, _ in expected]
    assert_close(_scores(actual), _scores(expected), rtol=1e-4, atol=1e-6, what="word attributions")
    assert got.predicted_class_index == want.predicted_class_index
    assert float(got.pred_probs) == pytest.approx(float(want.pred_probs), abs=1e-6)


def test_transformers_interpret_multilabel_explainer_reports_captums_probabilities(models, tokenizer):
    from transformers_interpret import MultiLabelClassificationExplainer

    expected, want, actual, got = _explain(MultiLabelClassificationExplainer, models("bert"), tokenizer, n_steps=20)
    assert list(actual) == list(expected)
    for label in expected:
        assert_close(_scores(actual[label]), _scores(expected[label]), rtol=1e-4, atol=1e-6, what=label)
        assert float(got.label_probs_dict[label]) == pytest.approx(float(want.label_probs_dict[label]), abs=1e-6)


def test_transformers_interpret_token_explainer_reports_captums_labels(tokenizer):
    from transformers_interpret import TokenClassificationExplainer

    torch.manual_seed(0)
    model = BertForTokenClassification(_config("bert")).eval()
    expected, _, actual, _ = _explain(TokenClassificationExplainer, model, tokenizer, n_steps=12)
    assert list(actual) == list(expected)
    for token in expected:
        assert actual[token]["label"] == expected[token]["label"]
        assert_close(_scores(actual[token]["attribution_scores"]), _scores(expected[token]["attribution_scores"]),
                     rtol=1e-4, atol=1e-6, what=f"token {token}")


@pytest.mark.parametrize("target", [" improves the model", None], ids=["given", "generated"])
def test_captums_llm_attribution_takes_the_fast_path_and_agrees(causal_lm, target):
    """LLMGradientAttribution passes the target tokens as a 1-D tensor in additional_forward_args."""
    from captum.attr import LLMGradientAttribution, TextTokenInput

    model, tokenizer = causal_lm("gpt2")
    prompt = TextTokenInput("The component works. Our method", tokenizer)
    generation = None if target else {"max_new_tokens": 4, "do_sample": False}
    expected = LLMGradientAttribution(CaptumLayerIntegratedGradients(model, model.transformer.wte), tokenizer) \
        .attribute(prompt, target=target, gen_args=generation, n_steps=16)
    attribution = LLMGradientAttribution(LayerIntegratedGradients(model, model.transformer.wte), tokenizer)
    actual = attribution.attribute(prompt, target=target, gen_args=generation, n_steps=16)
    assert attribution.attr_method.last_path == "fastig", attribution.attr_method.last_fallback_reason
    assert attribution.attr_method.fast_calls == len(expected.output_tokens) >= 3
    assert actual.output_tokens == expected.output_tokens
    assert_close(actual.token_attr, expected.token_attr, rtol=1e-4, atol=1e-7, what="token attributions")


def _inseq_attribution(model, tokenizer, under_fastig: bool):
    """Inseq's layer_integrated_gradients over a generation, as a user calls it; and Inseq's method."""
    import inseq

    with fastig.patch_captum() if under_fastig else torch.enable_grad():
        explainer = inseq.load_model(model, "layer_integrated_gradients", tokenizer=tokenizer)
        result = explainer.attribute("The component works. Our method", n_steps=16, show_progress=False,
                                     generation_args={"max_new_tokens": 4, "do_sample": False},
                                     step_scores=["probability"])
    return result.sequence_attributions[0], explainer.attribution_method.method


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_inseq_layer_integrated_gradients_takes_the_fast_path_and_gives_captums_result(causal_lm, family):
    """Inseq 0.7.1, unchanged under patch_captum(): every generated token's call takes the fast path and the
    attributions and step scores are Captum's. (Inseq's forward feeds the model the ids of its additional
    arguments, not the ids Captum passes, so Captum's baseline layer output is the input's and its
    attributions are zero; fastig's are the same zeros. The next test gives the same calls nonzero results.)"""
    model, tokenizer = causal_lm(family)
    expected, _ = _inseq_attribution(model, tokenizer, under_fastig=False)
    actual, method = _inseq_attribution(model, tokenizer, under_fastig=True)
    assert isinstance(method, LayerIntegratedGradients)
    assert method.last_path == "fastig" and method.fallback_calls == 0, method.last_fallback_reason
    assert method.fast_calls == expected.target_attributions.shape[1] >= 4      # one per attributed token
    assert [token.token for token in actual.target] == [token.token for token in expected.target]
    assert torch.equal(actual.target_attributions.isnan(), expected.target_attributions.isnan())
    assert_close(actual.target_attributions.nan_to_num(), expected.target_attributions.nan_to_num(),
                 rtol=1e-4, atol=1e-7, what="target attributions")
    assert_close(actual.step_scores["probability"], expected.step_scores["probability"], rtol=1e-5, atol=0,
                 what="probabilities")


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_inseqs_calls_with_a_forward_that_reads_the_path_agree_with_captum(causal_lm, family, monkeypatch):
    """Inseq's own calls (its additional arguments: ids, target ids, a step function, a mask, flags, a list)
    replayed with a forward that gives the model the ids Captum passes: nonzero attributions, fastig's
    equal to Captum's on the fast path."""
    model, tokenizer = causal_lm(family)
    calls = []
    captums_attribute = CaptumLayerIntegratedGradients.attribute

    def record(self, inputs, baselines=None, target=None, additional_forward_args=None, **rest):
        calls.append((self.forward_func, self.layer, inputs, baselines, target, additional_forward_args, rest))
        return captums_attribute(self, inputs, baselines, target, additional_forward_args, **rest)
    monkeypatch.setattr(CaptumLayerIntegratedGradients, "attribute", record)
    _inseq_attribution(model, tokenizer, under_fastig=False)
    monkeypatch.undo()
    assert len(calls) >= 4
    for forward, layer, inputs, baselines, target, arguments, rest in calls:
        def reads_the_path(ids, _inseqs_ids, *others, forward=forward):
            return forward(ids, ids, *others)
        call = dict(baselines=baselines, target=target, additional_forward_args=arguments, **rest)
        expected = captums_attribute(CaptumLayerIntegratedGradients(reads_the_path, layer), inputs, **call)
        lig = LayerIntegratedGradients(reads_the_path, layer)
        actual = lig.attribute(inputs, **call)
        assert lig.last_path == "fastig", lig.last_fallback_reason
        expected, actual = expected[0], actual[0]      # one input (the ids), as Inseq passes a tuple
        assert expected.abs().sum(-1).min() > 0
        assert_close(actual, expected, rtol=1e-4, atol=1e-6, what="attributions")
