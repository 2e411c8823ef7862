"""The `tools` scenario's models, tokenizers and timings: the tools people run, with Captum and on fastig.

transformers-interpret's SequenceClassificationExplainer and Inseq's layer_integrated_gradients (as they
call Captum, and unchanged under fastig.patch_captum()), and Captum's LLMGradientAttribution over
LayerIntegratedGradients (Captum's, fastig's drop-in in its place, and fastig.llm's one sweep over every
generated token), on small random models with tokenizers built here, offline.
"""

import tempfile
from pathlib import Path

import torch

from .common import alternated_seconds

WORDS = ("the a good bad movie film great awful plot actor method model results attention long "
         "document works component we propose show gains over baseline").split()
CORPUS = ("The component works. Our method improves the model; results (Table 2) show gains of 3.5% over the "
          "baseline! Neural networks learn representations. We propose a new attention mechanism for long documents.")


def wordpiece_tokenizer(folder: Path):
    from transformers import BertTokenizerFast

    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    return BertTokenizerFast(vocab=str(vocab))       # transformers 5 ignores vocab_file=


def byte_level_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator([CORPUS] * 20, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                   unk_token="<|endoftext|>")     # GPT-2's: Inseq's baseline is the unk token


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    """rel L2 of a to b; the plain L2 distance where b is zero (Inseq's attributions with Captum)."""
    return float((a - b).norm() / b.norm()) if b.norm() > 0 else float((a - b).norm())


def tools_timing(sizes: dict, repeats: int) -> dict:
    """Runs in a child process: each tool's call with Captum and on fastig, timed in alternation, and
    fastig's agreement with Captum (rel L2). sizes: layers, hidden, text_words, prompt_words,
    new_tokens, n_steps."""
    from captum.attr import LayerIntegratedGradients, LLMGradientAttribution, TextTokenInput
    from transformers import BertConfig, BertForSequenceClassification, GPT2Config, GPT2LMHeadModel
    try:
        from transformers_interpret import SequenceClassificationExplainer
    except ImportError:         # not a dependency of fastig (its dev extra has it): that tool's rows are left out
        SequenceClassificationExplainer = None
    try:
        import inseq
    except ImportError:         # the same
        inseq = None

    import fastig
    from fastig.captum import LayerIntegratedGradients as DropIn
    from fastig.llm import attribute_generation

    fastig.retain_freed_cpu_memory()     # every way alike: no ratio credits fastig for the allocator
    torch.manual_seed(0)
    shape = dict(num_hidden_layers=sizes["layers"], hidden_size=sizes["hidden"], num_attention_heads=4,
                 intermediate_size=4 * sizes["hidden"], initializer_range=0.2)
    with tempfile.TemporaryDirectory() as folder:
        words = wordpiece_tokenizer(Path(folder))
    classifier = BertForSequenceClassification(BertConfig(vocab_size=len(words), num_labels=2, **shape)).eval()
    text = " ".join(WORDS[i % len(WORDS)] for i in range(sizes["text_words"]))
    n_steps = sizes["n_steps"]

    def explain():
        explainer = SequenceClassificationExplainer(classifier, words)
        return torch.tensor([score for _, score in explainer(text, n_steps=n_steps)])

    def explain_on_fastig():
        with fastig.patch_captum():
            return explain()

    pieces = byte_level_tokenizer()
    end = pieces.eos_token_id
    generator = GPT2LMHeadModel(GPT2Config(vocab_size=len(pieces), n_embd=sizes["hidden"], n_layer=sizes["layers"],
                                           n_head=4, n_positions=1024, initializer_range=0.2, bos_token_id=end,
                                           eos_token_id=end)).eval()
    prompt = " ".join(CORPUS.split()[:sizes["prompt_words"]])
    target = torch.tensor(pieces.encode(" " + " ".join(CORPUS.split()[::-1][:sizes["new_tokens"]]))[:sizes["new_tokens"]])

    def llm(lig_class):
        attribution = LLMGradientAttribution(lig_class(generator, generator.get_input_embeddings()), pieces)
        return lambda: attribution.attribute(TextTokenInput(prompt, pieces), target=target, n_steps=n_steps).token_attr

    def inseq_run(on_fastig: bool):
        def run():
            with fastig.patch_captum() if on_fastig else torch.enable_grad():
                explainer = inseq.load_model(generator, "layer_integrated_gradients", tokenizer=pieces)
                out = explainer.attribute(prompt, n_steps=n_steps, show_progress=False, generation_args={
                    "max_new_tokens": sizes["new_tokens"], "do_sample": False})
            return out.sequence_attributions[0].target_attributions.nan_to_num()
        return run

    runs = {} if SequenceClassificationExplainer is None else {
        "transformers-interpret, Captum": explain, "transformers-interpret, fastig (patch_captum)": explain_on_fastig}
    if inseq is not None:
        runs |= {"Inseq, Captum": inseq_run(False), "Inseq, fastig (patch_captum)": inseq_run(True)}
    runs |= {"LLMGradientAttribution, Captum": llm(LayerIntegratedGradients),
            "LLMGradientAttribution, fastig drop-in": llm(DropIn),
            "fastig.llm.attribute_generation (one sweep)":
                lambda: attribute_generation(generator, pieces, prompt, target, n_steps=n_steps).token_attr}
    seconds, times, results = alternated_seconds(runs, repeats)
    rows = []
    for name, value in seconds.items():
        tool = name.split(",")[0] if "," in name else "LLMGradientAttribution"
        reference = results[f"{tool}, Captum"]
        rows.append({"provider": name, "tool": tool, "seconds": value, "times": times[name],
                     "rel_l2_vs_captum": None if name.endswith("Captum") else _relative(results[name], reference)})
    for row in rows:
        row["speedup_vs_captum"] = seconds[f"{row['tool']}, Captum"] / row["seconds"]
    return {"rows": rows, "prompt_tokens": len(pieces.encode(prompt)), "generated_tokens": len(target),
            "text_tokens": len(words(text)["input_ids"]),
            "left_out": [f"{tool} (not installed)" for tool, module in
                         (("transformers-interpret", SequenceClassificationExplainer), ("Inseq", inseq))
                         if module is None]}
