"""Classifiers past the encoder families: decoders (GPT-2, Llama) with tokenizers that have no CLS or SEP,
encoder-decoders (BART, T5), relative positions without a position limit (Funnel)."""

import warnings

import pytest
import torch
import transformers
from tokenizers import processors
from transformers import PreTrainedTokenizerFast

import fastig
from fastig.reference import MAX_REL_L2, captum_attribute, compare

from conftest import CORPUS, assert_close, byte_level_bpe, make_text

N_STEPS = 12
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, num_labels=2)


@pytest.fixture(scope="module")
def gpt2_tokenizer():
    """GPT-2's kind: byte-level BPE, one special token for everything, no CLS, SEP or template."""
    bpe = byte_level_bpe(["<|endoftext|>"])
    return PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>")


@pytest.fixture(scope="module")
def llama_tokenizer():
    """Llama's kind: a template that puts BOS before the text, no CLS or SEP."""
    bpe = byte_level_bpe(["<s>", "</s>", "<unk>"])
    bpe.post_processor = processors.TemplateProcessing(single="<s> $A",
                                                       special_tokens=[("<s>", bpe.token_to_id("<s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="</s>")


def _gpt2(tokenizer, pad_token_id="tokenizer"):
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=4, num_labels=2,
                                     n_positions=64, initializer_range=0.3,
                                     pad_token_id=tokenizer.pad_token_id if pad_token_id == "tokenizer" else None)
    return transformers.GPT2ForSequenceClassification(config).eval()


def _llama(tokenizer):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=len(tokenizer), **TINY, num_key_value_heads=2, initializer_range=0.05,
                                      max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id)
    return transformers.LlamaForSequenceClassification(config).eval()


def test_a_decoder_classifier_without_special_tokens(gpt2_tokenizer):
    """No CLS or SEP: the text's own tokens, a baseline of PAD only. The classifier reads the last token that is
    not PAD, which for the baseline's ids would be another position than the path's; F(b) is the path's start,
    so fastig's delta measures the integral (Captum's, of the baseline ids' forward, does not)."""
    engine = fastig.Engine(_gpt2(gpt2_tokenizer), gpt2_tokenizer)
    (doc,) = engine.documents(CORPUS[0])
    assert doc.tokens[0] == "The" and doc.special_positions == []
    assert set(doc.baseline_ids.tolist()) == {gpt2_tokenizer.pad_token_id}
    for text in CORPUS[:2]:
        ours = engine.attribute(text, n_steps=N_STEPS)
        comparison = compare(ours, captum_attribute(engine, text, n_steps=N_STEPS, internal_batch_size=5))
        # The same attributions and integral; Captum's delta is of another F(b), which `fastig check` says.
        assert comparison.rel_l2 <= MAX_REL_L2 and comparison.sum_diff <= 1e-5 < comparison.delta_diff
        assert comparison.other_baseline_output and comparison.passed()
        fine = engine.attribute(text, n_steps=128)
        gap = float(fine.output_at_input[0] - fine.output_at_baseline[0])
        assert abs(float(fine.delta[0])) <= 1e-3 * abs(gap), (float(fine.delta[0]), gap)
    assert all(d.tolerance_met for d in engine.attribute(CORPUS[:2]).documents)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_a_decoders_left_padded_batch_explains_its_texts(gpt2_tokenizer, llama_tokenizer, family):
    """A decoder's batch is padded on the left, with a PAD that is also its EOS (so ids alone cannot tell
    padding from text): the attention mask leaves it out, and the records are the texts' own."""
    tokenizer = gpt2_tokenizer if family == "gpt2" else llama_tokenizer
    engine = fastig.Engine(_gpt2(tokenizer) if family == "gpt2" else _llama(tokenizer), tokenizer)
    texts = [CORPUS[0], CORPUS[1][:30]]
    expected = engine.attribute(texts, n_steps=N_STEPS)
    tokenizer.padding_side = "left"
    try:
        batch = tokenizer(texts, padding=True, return_tensors="pt")
    finally:
        tokenizer.padding_side = "right"
    got = engine.attribute(batch, n_steps=N_STEPS)
    assert bool((batch["attention_mask"][1] == 0).any()) and got.tokens == expected.tokens
    for ours, theirs in zip(got.documents, expected.documents):
        assert ours.special_positions == theirs.special_positions
        assert_close(ours.probs, theirs.probs, rtol=1e-5, atol=1e-7, what="probabilities")
        assert_close(ours.token_scores, theirs.token_scores, rtol=1e-4, atol=1e-6, what="token scores")


def test_a_tokenizer_template_puts_its_own_special_tokens_around_the_text(llama_tokenizer):
    """Llama's BOS before the text: kept in the baseline, counted in the position limit (64 here)."""
    engine = fastig.Engine(_llama(llama_tokenizer), llama_tokenizer)
    (doc,) = engine.documents(CORPUS[1], baseline="unk")
    bos, unk = llama_tokenizer.bos_token_id, llama_tokenizer.unk_token_id
    assert doc.tokens[:2] == ["<s>", "Our"] and doc.special_positions == [0]
    assert doc.baseline_ids.tolist() == [bos] + [unk] * (len(doc.input_ids) - 1)
    ours = engine.attribute(CORPUS[1], n_steps=N_STEPS, baseline="unk")
    theirs = captum_attribute(engine, CORPUS[1], n_steps=N_STEPS, baseline="unk", internal_batch_size=5)
    assert compare(ours, theirs).rel_l2 <= MAX_REL_L2
    with pytest.warns(fastig.TruncationWarning, match="the first 63 kept"):
        (long,) = engine.documents(" ".join(CORPUS * 4))
    assert len(long.input_ids) == 64 and long.tokens[0] == "<s>"


def test_the_pad_baseline_takes_the_configs_pad_where_the_tokenizer_has_none():
    """GPT-2 classifiers are fine-tuned with config.pad_token_id set and often saved with a tokenizer without."""
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=byte_level_bpe(["<|endoftext|>"]), eos_token="<|endoftext|>")
    assert tokenizer.pad_token_id is None
    model = _gpt2(tokenizer, pad_token_id=None)
    model.config.pad_token_id = tokenizer.eos_token_id
    (doc,) = fastig.Engine(model, tokenizer).documents(CORPUS[0])
    assert set(doc.baseline_ids.tolist()) == {tokenizer.eos_token_id}


def test_no_padding_token_is_a_clear_error(gpt2_tokenizer):
    engine = fastig.Engine(_gpt2(gpt2_tokenizer, pad_token_id=None), gpt2_tokenizer)
    with pytest.raises(fastig.InputError, match=r"model.config.pad_token_id is None: GPT2ForSequenceClassification"):
        engine.attribute(CORPUS[0], baseline="zeros")


def test_an_encoder_decoder_takes_its_encoders_embeddings(tokenizer):
    """BART's shared embedding never runs (the encoder and decoder have their own): by default the encoder's
    is the layer (the default was refused, naming it), and a layer that does not run is a clear error naming
    it. The decoder reads the input's ids at every point of the path, and at F(b) too."""
    torch.manual_seed(0)
    config = transformers.BartConfig(vocab_size=tokenizer.vocab_size, d_model=32, encoder_layers=1, decoder_layers=1,
                                     encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
                                     decoder_ffn_dim=64, num_labels=2, pad_token_id=tokenizer.pad_token_id,
                                     bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id,
                                     init_std=0.3)
    model = transformers.BartForSequenceClassification(config).eval()
    with pytest.raises(fastig.LayerNotFoundError, match=r"ran 0 times .* layer='model.encoder.embed_tokens'"):
        fastig.Engine(model, tokenizer, layer="model.shared").attribute(make_text(10))
    engine = fastig.Engine(model, tokenizer)
    assert engine.layer is model.model.encoder.embed_tokens
    text = make_text(20, seed=3)
    ours = engine.attribute(text, n_steps=N_STEPS)
    assert compare(ours, captum_attribute(engine, text, n_steps=N_STEPS, internal_batch_size=5)).rel_l2 <= MAX_REL_L2
    fine = engine.attribute(text, n_steps=128)
    gap = float(fine.output_at_input[0] - fine.output_at_baseline[0])
    assert abs(float(fine.delta[0])) <= 1e-3 * abs(gap), (float(fine.delta[0]), gap)


def test_t5_its_eos_after_the_text_and_its_encoders_embeddings():
    """T5's template puts EOS after the text (kept by the baseline) and its classifier reads the decoder's EOS:
    attributions and their sum as Captum's, and the default call meets its accuracy."""
    bpe = byte_level_bpe(["<pad>", "</s>", "<unk>"])
    eos_id = bpe.token_to_id("</s>")
    bpe.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                       special_tokens=[("</s>", eos_id)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="</s>", unk_token="<unk>", pad_token="<pad>")
    torch.manual_seed(0)
    config = transformers.T5Config(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4,
                                   num_labels=2, pad_token_id=tokenizer.pad_token_id, eos_token_id=eos_id,
                                   decoder_start_token_id=tokenizer.pad_token_id, initializer_factor=0.5)
    model = transformers.T5ForSequenceClassification(config).eval()
    engine = fastig.Engine(model, tokenizer)
    assert engine.layer is model.transformer.encoder.embed_tokens
    (doc,) = engine.documents(CORPUS[0])
    assert doc.tokens[-1] == "</s>"
    assert doc.baseline_ids.tolist() == [tokenizer.pad_token_id] * (len(doc.tokens) - 1) + [eos_id]
    comparison = compare(engine.attribute(CORPUS[0], n_steps=N_STEPS),
                         captum_attribute(engine, CORPUS[0], n_steps=N_STEPS, internal_batch_size=5))
    assert comparison.rel_l2 <= MAX_REL_L2 and comparison.passed()
    assert all(d.tolerance_met for d in engine.attribute(CORPUS[:2]).documents)


def test_relative_positions_have_no_position_limit(tokenizer):
    """Funnel's config has no max_position_embeddings: texts are not cut (this tokenizer sets no limit either)."""
    torch.manual_seed(0)
    config = transformers.FunnelConfig(vocab_size=tokenizer.vocab_size, block_sizes=[1, 1], d_model=32, n_head=4,
                                       d_head=8, d_inner=64, num_labels=2, initializer_range=0.3, pad_token_id=0)
    engine = fastig.Engine(transformers.FunnelForSequenceClassification(config).eval(), tokenizer)
    with warnings.catch_warnings():
        warnings.simplefilter("error", fastig.TruncationWarning)
        (doc,) = engine.documents(make_text(600))
    assert len(doc.input_ids) == 602
    text = make_text(40, seed=4)
    ours = engine.attribute(text, n_steps=N_STEPS)
    assert compare(ours, captum_attribute(engine, text, n_steps=N_STEPS, internal_batch_size=5)).rel_l2 <= MAX_REL_L2
    with pytest.raises(fastig.InputError, match="max_length=0 must be an integer of at least 1"):
        engine.attribute(text, max_length=0)
