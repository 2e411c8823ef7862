"""Tiny random classifiers of several families and an offline tokenizer, built from configs with fixed seeds."""

import os
import random
import textwrap

import pytest
import torch
from transformers import (AlbertConfig, AlbertForSequenceClassification, BertConfig, BertForSequenceClassification,
                          BertTokenizerFast, BigBirdConfig, BigBirdForSequenceClassification, DebertaV2Config,
                          DebertaV2ForSequenceClassification, DistilBertConfig, DistilBertForSequenceClassification,
                          ElectraConfig, ElectraForSequenceClassification, LongformerConfig,
                          LongformerForSequenceClassification, RobertaConfig, RobertaForSequenceClassification)

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = ["the", "a", "good", "bad", "movie", "film", "great", "awful", "plot", "actor", "<script>", "&"] + \
        [f"w{i}" for i in range(100)]
VOCAB_SIZE = len(SPECIAL) + len(WORDS)
N_LABELS = 3
# Random weights give near-constant outputs at the usual 0.02; 0.3 makes attributions non-trivial.
COMMON = dict(vocab_size=VOCAB_SIZE, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
              intermediate_size=64, initializer_range=0.3, num_labels=N_LABELS)


def _config(family: str):
    if family == "bert":
        return BertConfig(**COMMON, max_position_embeddings=512)
    if family == "longformer":
        # A window of 16 is much shorter than the longer test documents, as 512 is for 4096-token ones.
        return LongformerConfig(**COMMON, attention_window=16, max_position_embeddings=1026,
                                pad_token_id=0, bos_token_id=2, eos_token_id=3, sep_token_id=3)
    if family == "roberta":
        return RobertaConfig(**COMMON, max_position_embeddings=520, pad_token_id=0, bos_token_id=2, eos_token_id=3)
    if family == "distilbert":
        return DistilBertConfig(vocab_size=VOCAB_SIZE, dim=32, n_layers=2, n_heads=4, hidden_dim=64,
                                initializer_range=0.3, num_labels=N_LABELS, pad_token_id=0)
    if family == "electra":
        return ElectraConfig(**{**COMMON, "hidden_size": 48}, embedding_size=32, max_position_embeddings=512)
    if family == "deberta-v2":
        return DebertaV2Config(**COMMON, max_position_embeddings=512)
    if family == "albert":      # one layer's weights shared by both layers, embeddings narrower than hidden
        return AlbertConfig(**COMMON, embedding_size=16, max_position_embeddings=512, pad_token_id=0)
    if family == "big-bird":
        # Block-sparse attention from 37 tokens on ((2 + 3 + 2 * 2) blocks of 4); at and under 36 the model switches
        # itself to full attention for good (transformers' BigBirdModel.set_attention_type).
        return BigBirdConfig(**COMMON, attention_type="block_sparse", block_size=4, num_random_blocks=2,
                             max_position_embeddings=512, pad_token_id=0)
    raise KeyError(family)


MODEL_CLASSES = {"bert": BertForSequenceClassification, "longformer": LongformerForSequenceClassification,
                 "roberta": RobertaForSequenceClassification, "distilbert": DistilBertForSequenceClassification,
                 "electra": ElectraForSequenceClassification, "deberta-v2": DebertaV2ForSequenceClassification,
                 "albert": AlbertForSequenceClassification, "big-bird": BigBirdForSequenceClassification}
FAMILIES = ("bert", "longformer", "roberta", "distilbert")


def make_model(family: str, seed: int = 0):
    torch.manual_seed(seed)
    return MODEL_CLASSES[family](_config(family)).eval()


# A byte-level BPE tokenizer (RoBERTa's and Longformer's kind) is trained on this: English with
# punctuation, an em dash and accents, so that pieces such as "Ġ" and "âĢĶ" exist to be decoded.
CORPUS = ["The component works. Reagan's approach \u2014 it works, doesn't it? A caf\u00e9, a r\u00e9sum\u00e9.",
          "Our method improves the model; results (Table 2) show gains of 3.5% over the baseline!",
          "Neural networks learn representations. We propose a new attention mechanism for long documents."]


def byte_level_text(n_sentences: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(CORPUS) for _ in range(n_sentences))


def make_byte_level_model(family: str, tokenizer, seed: int = 0):
    """A tiny RoBERTa or Longformer classifier for the byte-level tokenizer (4,096 positions for Longformer)."""
    ids = dict(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
               eos_token_id=tokenizer.eos_token_id)
    common = {**COMMON, **ids}
    torch.manual_seed(seed)
    if family == "longformer":
        config = LongformerConfig(**common, attention_window=16, max_position_embeddings=4098,
                                  sep_token_id=tokenizer.sep_token_id)
        return LongformerForSequenceClassification(config).eval()
    return RobertaForSequenceClassification(RobertaConfig(**common, max_position_embeddings=520)).eval()


def make_text(n_words: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS[:10] + WORDS[12:]) for _ in range(n_words))


@pytest.fixture(autouse=True)
def fixed_seeds():
    torch.manual_seed(0)
    random.seed(0)


@pytest.fixture(scope="session")
def vocab_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    path.write_text("\n".join(SPECIAL + WORDS) + "\n")
    return path


@pytest.fixture(scope="session")
def tokenizer(vocab_file):
    # transformers 5 ignores vocab_file=; vocab= takes the path.
    return BertTokenizerFast(vocab=str(vocab_file))


def byte_level_bpe(special_tokens: list[str], corpus: list[str] = CORPUS):
    """A byte-level BPE (as RoBERTa's, Longformer's and GPT-2's) of 420 pieces trained on `corpus`, offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=420, special_tokens=special_tokens,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(corpus * 20, trainer)
    return bpe


def roberta_kind_tokenizer(bpe):
    """A tokenizers object as a transformers tokenizer with RoBERTa's special tokens."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", mask_token="<mask>", cls_token="<s>", sep_token="</s>")


def unigram_tokenizer(corpus: list[str] = CORPUS, vocab_size: int = 150):
    """A SentencePiece-style Unigram tokenizer (XLM-RoBERTa's, DeBERTa-v3's, ALBERT's kind: "\u2581" marks a
    word's start) trained on `corpus`, offline."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    unigram = Tokenizer(models.Unigram())
    unigram.normalizer = normalizers.NFKC()
    unigram.pre_tokenizer = pre_tokenizers.Metaspace()
    unigram.decoder = decoders.Metaspace()
    unigram.train_from_iterator(corpus * 20, trainers.UnigramTrainer(
        vocab_size=vocab_size, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"], unk_token="<unk>",
        show_progress=False))
    unigram.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    return roberta_kind_tokenizer(unigram)


@pytest.fixture(scope="session")
def byte_level_tokenizer():
    return roberta_kind_tokenizer(byte_level_bpe(["<s>", "<pad>", "</s>", "<unk>", "<mask>"]))


@pytest.fixture(scope="session")
def sentencepiece_tokenizer():
    """A Unigram tokenizer of 150 pieces trained on CORPUS: small, so that words of rare characters start with
    a bare "\u2581" piece."""
    return unigram_tokenizer()


@pytest.fixture(scope="session")
def causal_lm():
    """(model, tokenizer) of a tiny causal LM ("gpt2" or "llama") with a byte-level BPE tokenizer."""
    from transformers import (GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM,
                              PreTrainedTokenizerFast)

    bpe = byte_level_bpe(["<|endoftext|>"])
    # GPT-2's own special tokens: one for bos, eos and unk (Inseq's baseline is the unk token), no pad
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                        unk_token="<|endoftext|>")
    end = tokenizer.eos_token_id
    cache = {}

    def get(family: str):
        if family not in cache:
            torch.manual_seed(0)
            if family == "gpt2":
                config = GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=4, n_positions=128,
                                    initializer_range=0.3, bos_token_id=end, eos_token_id=end)
                cache[family] = GPT2LMHeadModel(config).eval()
            else:
                config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                     num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                     max_position_embeddings=128, initializer_range=0.3, bos_token_id=end,
                                     eos_token_id=end)      # no pad token: a zero embedding row at the
                                     # baseline id 0 would make F jump at alpha = 0 (RMSNorm of 0)
                cache[family] = LlamaForCausalLM(config).eval()
        return cache[family], tokenizer
    return get


@pytest.fixture(scope="session")
def models():
    cache = {}

    def get(family: str):
        if family not in cache:
            cache[family] = make_model(family)
        return cache[family]
    return get


@pytest.fixture(scope="session")
def saved_model(tmp_path_factory, tokenizer):
    """A tiny Longformer classifier and its tokenizer saved as a local model folder."""
    def save(family: str = "longformer"):
        path = tmp_path_factory.mktemp(f"model-{family}")
        make_model(family).save_pretrained(path)
        tokenizer.save_pretrained(path)
        return path
    return save


def record(**values):
    """A DocumentResult with the given fields, and neutral values for the rest (a hand-built fixture)."""
    from fastig.result import DocumentResult

    n = len(values["tokens"])
    defaults = {"input_ids": list(range(n)), "special_positions": [0, n - 1], "token_scores": [0.0] * n,
                "prediction": 0, "probs": [0.5, 0.5], "target": values.get("prediction", 0), "output_at_input": 0.5,
                "output_at_baseline": 0.25, "delta": 0.0, "alphas": [0.5], "integrand": [0.25], "evaluations": 1}
    return DocumentResult.from_json({**defaults, **values})


@pytest.fixture
def multi_label_run(tokenizer, tmp_path):
    """(model folder, texts, (text, label) pairs predicted) of a 3-label multi-label BERT whose head is set so
    that of its 4 texts one has labels 0 and 1 above 1/2, two label 0 alone and one none (its top label: 0)."""
    model = make_model("bert")
    model.config.problem_type = "multi_label_classification"
    texts = [make_text(6 + 3 * i, seed=10 + i) for i in range(4)]
    head = model.classifier
    with torch.no_grad():       # label 1 is label 0 less a margin, label 2 never predicted
        head.weight[1], head.bias[1], head.bias[2] = head.weight[0], head.bias[0], -100.0
        logits = torch.cat([model(**tokenizer(t, return_tensors="pt")).logits for t in texts])[:, 0].sort().values
        # by logit 0: the top text gets labels 0 and 1, the next two label 0, the last none (so its top, 0)
        head.bias[0] -= (logits[0] + logits[1]) / 2
        head.bias[1] -= (logits[2] + logits[3]) / 2
        probabilities = torch.sigmoid(torch.cat([model(**tokenizer(t, return_tensors="pt")).logits for t in texts]))
    expected = sorted((d, c) for d in range(4) for c in range(3) if probabilities[d, c] > 0.5)
    expected += [(d, int(probabilities[d].argmax())) for d in range(4) if not (probabilities[d] > 0.5).any()]
    assert sorted(c for _, c in expected) == [0, 0, 0, 0, 1]      # as built: two labels, one label, none
    model.save_pretrained(tmp_path / "multi-label-model")
    tokenizer.save_pretrained(tmp_path / "multi-label-model")
    return str(tmp_path / "multi-label-model"), texts, sorted(expected)


def stop_at_group(monkeypatch, group: int = 2, error=KeyboardInterrupt) -> list:
    """Ctrl-C (or `error`) as Engine.attribute starts its `group`-th group of documents (those before it done);
    the list of calls returned may be cleared to stop a later call the same way."""
    import fastig

    run_group, calls = fastig.Engine._attribute_group, []

    def stopped(*args):
        calls.append(1)
        if len(calls) == group:
            raise error
        return run_group(*args)

    monkeypatch.setattr(fastig.Engine, "_attribute_group", stopped)
    return calls


def assert_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float, atol: float, what: str = "tensor"):
    """allclose that says how many elements differ, the worst one and where."""
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    bad = ~torch.isclose(actual, expected, rtol=rtol, atol=atol)
    if bad.any():
        diff = (actual - expected).abs()
        worst = tuple(int(i) for i in torch.unravel_index(diff.argmax(), diff.shape))
        raise AssertionError(f"{what}: {int(bad.sum())}/{bad.numel()} elements differ (rtol={rtol}, atol={atol}); "
                             f"worst at {worst}: {actual[worst].item()} vs {expected[worst].item()}")


def hanging_after_shards(shards: int, folder, computing: bool = False) -> dict:
    """The environment of a `python -m fastig` child whose data-set run stops still (sleeps) once each of its
    processes has written `shards` shards: a kill then lands midway, however loaded the machine is. With
    `computing`, it computes instead, in C calls of about 0.4 s during which Python defers a signal's handler,
    as it does during a model call. A sitecustomize module on PYTHONPATH wraps the shard writer; the code
    under test is unchanged."""
    folder.mkdir(parents=True, exist_ok=True)
    wait = "sum(range(3 * 10**7))" if computing else "time.sleep(1)"
    (folder / "sitecustomize.py").write_text(textwrap.dedent(f"""
        import time
        import fastig.app.dataset as dataset

        write, written = dataset.write_atomically, []

        def write_then_hang(path, text):
            write(path, text)
            if path.parent.name == "shards":
                written.append(path)
                while len(written) >= {shards}:
                    {wait}

        dataset.write_atomically = write_then_hang
    """))
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")]))}
