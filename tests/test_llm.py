"""fastig.llm: each generated token attributed to the prompt in one sweep, equal to Captum's
LLMGradientAttribution over LayerIntegratedGradients, which runs one integration per token."""

import pytest
import torch
from captum.attr import LayerIntegratedGradients, LLMGradientAttribution, TextTokenInput
from conftest import assert_close

from fastig.errors import InputError, TargetError
from fastig.llm import attribute_generation

PROMPT = "The component works. Our method"


def _captum(model, tokenizer, target, generation=None, skip_tokens=None, n_steps=16):
    attribution = LLMGradientAttribution(LayerIntegratedGradients(model, model.get_input_embeddings()), tokenizer)
    return attribution.attribute(TextTokenInput(PROMPT, tokenizer, skip_tokens=skip_tokens), target=target,
                                 gen_args=generation, n_steps=n_steps)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("case", ["given", "generated", "skip tokens"])
def test_every_generated_token_in_one_sweep_equals_captum(causal_lm, family, case):
    model, tokenizer = causal_lm(family)
    target = None if case == "generated" else " improves the model"
    generation = {"max_new_tokens": 4, "do_sample": False} if case == "generated" else None
    skip = ["Our", "."] if case == "skip tokens" else None
    expected = _captum(model, tokenizer, target, generation, skip)
    actual = attribute_generation(model, tokenizer, PROMPT, target, generation=generation, skip_tokens=skip,
                                  n_steps=16)
    assert actual.token_attr.shape == expected.token_attr.shape == (len(actual.output_tokens), len(actual.prompt_tokens))
    for name in ("token_attr", "seq_attr"):     # fp32 rounding of two computation orders
        mine, captums = getattr(actual, name), getattr(expected, name)
        assert float((mine - captums).norm() / captums.norm()) <= 1e-5, name
    if case == "given":     # a compiled model, or one in DataParallel: the module it wraps, as Engine takes it
        for wrapped in (torch.compile(model), torch.nn.DataParallel(model)):
            again = attribute_generation(wrapped, tokenizer, PROMPT, target, n_steps=16)
            assert torch.equal(again.token_attr, actual.token_attr)


def test_a_model_in_training_is_explained_without_dropout_and_left_training(causal_lm):
    """GPT-2's dropout (0.1) is off while generating and attributing; the model is left in training after; inside
    torch.inference_mode or a caller's bf16 autocast the attributions are the same."""
    from transformers import GPT2LMHeadModel

    eval_model, tokenizer = causal_lm("gpt2")
    model = GPT2LMHeadModel(eval_model.config)
    model.load_state_dict(eval_model.state_dict())
    expected = attribute_generation(eval_model, tokenizer, PROMPT, generation={"max_new_tokens": 3}, n_steps=8)
    model.train()
    actual = attribute_generation(model, tokenizer, PROMPT, generation={"max_new_tokens": 3}, n_steps=8)
    assert model.training and all(module.training for module in model.modules())
    assert actual.output_text == expected.output_text
    assert_close(actual.token_attr, expected.token_attr, rtol=1e-5, atol=1e-7, what="token_attr")
    for context in (torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16)):   # a caller's contexts
        with context:
            inside = attribute_generation(model, tokenizer, PROMPT, generation={"max_new_tokens": 3}, n_steps=8)
        assert_close(inside.token_attr, expected.token_attr, rtol=1e-5, atol=1e-7, what=f"token_attr in {context}")


def test_a_long_generation_shows_its_bar_unasked(causal_lm, monkeypatch, capsys):
    """progress=None, as Engine.attribute's: a bar once the call has run 10 s (here at once), none with False."""
    import fastig.engine

    model, tokenizer = causal_lm("gpt2")
    monkeypatch.setattr(fastig.engine, "PROGRESS_DELAY_S", 0.0)
    attribute_generation(model, tokenizer, PROMPT, " improves the model", n_steps=4)
    assert "model evaluations" in capsys.readouterr().err
    attribute_generation(model, tokenizer, PROMPT, " improves the model", n_steps=4, progress=False)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_each_tokens_attributions_add_up_to_its_change_in_log_probability(causal_lm, family):
    """Completeness, against log-probabilities the model gives for the prompt and for baseline ids."""
    model, tokenizer = causal_lm(family)
    result = attribute_generation(model, tokenizer, PROMPT, " improves the model", n_steps=64)
    prompt, output = result.prompt_ids, result.output_ids

    def log_probs(prompt_ids):
        with torch.no_grad():
            logits = model(torch.cat([prompt_ids, output[:-1]])[None]).logits[0, len(prompt_ids) - 1:]
        return torch.log_softmax(logits, -1).gather(-1, output[:, None])[:, 0]
    change = log_probs(prompt) - log_probs(torch.zeros_like(prompt))
    assert_close(result.log_probs, log_probs(prompt), rtol=1e-5, atol=1e-6, what="log-probabilities")
    assert_close(result.token_attr.sum(1), change, rtol=1e-3, atol=1e-4, what="sum of attributions")
    assert_close(result.delta, result.token_attr.sum(1) - change, rtol=0, atol=1e-5, what="delta")


def test_each_step_runs_the_model_once_for_every_token(causal_lm):
    model, tokenizer = causal_lm("gpt2")
    forwards = []
    handle = model.lm_head.register_forward_hook(lambda module, args, out: forwards.append(out.shape[0]))
    try:
        result = attribute_generation(model, tokenizer, PROMPT, " improves the model", n_steps=10, chunk_size=5)
    finally:
        handle.remove()
    assert len(result.output_tokens) == 3
    assert forwards == [1, 1, 5, 5]     # F(x), F(b), then 10 steps in two calls: not one sweep per token


@pytest.mark.parametrize("kwargs, error, fragment", [
    (dict(prompt=""), InputError, "prompt holds no token"),
    (dict(target=""), TargetError, "holds no token"),
    (dict(generation={"max_new_tokens": 2}), TargetError, "generation= is for target=None"),
    (dict(skip_tokens=["nosuchtoken"]), InputError, "not tokens of the tokenizer"),
    (dict(prompt=torch.tensor([1, 5000])), InputError, "vocabulary of"),
    (dict(prompt=3.5), InputError, "prompt must be a str or a LongTensor"),
])
def test_bad_inputs_name_the_argument(causal_lm, kwargs, error, fragment):
    model, tokenizer = causal_lm("gpt2")
    arguments = dict(prompt=PROMPT, target=" the model", n_steps=4) | kwargs
    with pytest.raises(error, match=fragment):
        attribute_generation(model, tokenizer, arguments.pop("prompt"), arguments.pop("target"), **arguments)


def test_the_generation_page_shows_the_matrix(causal_lm, tmp_path):
    from test_report import _greens_and_reds, _measured, _screenshot

    from fastig.app.report import generation_page

    model, tokenizer = causal_lm("gpt2")
    result = attribute_generation(model, tokenizer, PROMPT + " <b>", " improves the model", n_steps=8)
    page = tmp_path / "generation.html"
    page.write_text(generation_page(result))
    shape = _measured(page, "[document.querySelectorAll('table.matrix tbody tr').length, "
                            "document.querySelectorAll('table.matrix thead th').length, "
                            "document.querySelectorAll('b').length]")
    # a row per generated token and the sum; a column per prompt token, the row names and the deltas;
    # the prompt's "<b>" is text, not markup (the page's own two <b> labels only)
    assert shape == [len(result.output_tokens) + 1, len(result.prompt_tokens) + 2, 2]
    greens, reds = _greens_and_reds(_screenshot(page))
    assert greens > 200 and reds > 200
