"""The last layer computing only the first token changes nothing the classifier reads: logits and input
gradients equal the full model's to fp32 rounding, on every family it applies to, with padding."""

from contextlib import nullcontext

import pytest
import torch

import fastig
from fastig.first_token import first_token_only, last_layer
from fastig.longformer import banded_attention

from conftest import assert_close, make_model, make_text

REDUCED = ("bert", "roberta", "distilbert", "electra", "longformer")


def _logits_and_gradient(model, tokenizer, global_first: bool = True):
    batch = tokenizer([make_text(40, 1), make_text(23, 2), make_text(7, 3)], padding=True, return_tensors="pt")
    kwargs = {"attention_mask": batch["attention_mask"]}
    if model.config.model_type == "longformer":
        kwargs["global_attention_mask"] = torch.zeros_like(batch["input_ids"])
        kwargs["global_attention_mask"][:, 0 if global_first else 5] = 1
    embeddings = model.get_input_embeddings()(batch["input_ids"]).detach().requires_grad_(True)
    logits = model(inputs_embeds=embeddings, **kwargs).logits
    (gradient,) = torch.autograd.grad(torch.softmax(logits, -1)[:, 1].sum(), embeddings)
    return logits.detach(), gradient


@pytest.mark.parametrize("family, banded", [(family, False) for family in REDUCED] + [("longformer", True)])
def test_the_first_token_only_last_layer_equals_the_full_one(tokenizer, family, banded):
    model = make_model(family)
    assert last_layer(model) is not None
    with banded_attention(model) if banded else nullcontext():
        full_logits, full_gradient = _logits_and_gradient(model, tokenizer)
        with first_token_only(model):
            logits, gradient = _logits_and_gradient(model, tokenizer)
    scale = float(full_gradient.abs().max())
    assert_close(logits, full_logits, rtol=1e-5, atol=1e-5, what="logits")
    assert_close(gradient, full_gradient, rtol=1e-4, atol=1e-5 * scale, what="input gradient")
    assert "forward" not in vars(last_layer(model))      # given back after the block


def test_models_it_does_not_know_run_in_full(tokenizer):
    model = make_model("deberta-v2")
    assert last_layer(model) is None
    with first_token_only(model):
        assert not any("forward" in vars(m) for m in model.modules())


def test_a_longformer_whose_first_token_is_not_global_runs_in_full(tokenizer):
    model = make_model("longformer")
    full_logits, full_gradient = _logits_and_gradient(model, tokenizer, global_first=False)
    with first_token_only(model):
        logits, gradient = _logits_and_gradient(model, tokenizer, global_first=False)
    assert torch.equal(logits, full_logits) and torch.equal(gradient, full_gradient)


def test_attributing_to_the_last_layer_keeps_it_whole(models, tokenizer):
    """With layer= the last layer its captured output must be every token's: the reduction stays off,
    and the attributions are Captum's."""
    from fastig.reference import MAX_REL_L2, captum_attribute, compare

    model = models("bert")
    engine = fastig.Engine(model, tokenizer, layer=last_layer(model))
    text = make_text(12)
    result = engine.attribute(text, n_steps=8)
    assert compare(result, captum_attribute(engine, text, n_steps=8)).rel_l2 <= MAX_REL_L2
