"""Loading a classifier, finding the layer to attribute to, and running the model from that layer."""

import numbers
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .errors import InputError, LayerNotFoundError, ModelLoadError, TargetError
from .options import OUTPUTS


@contextmanager
def hub_quiet(bars: bool = False):
    """Inside: transformers and huggingface_hub log only errors (an unreachable hub's retries printed lines
    before fastig's one-line error) and, unless `bars`, transformers shows no loading bars; their settings
    as they were after."""
    from huggingface_hub.utils import logging as hub_logging
    from transformers.utils import logging as hf_logging

    verbosities = hf_logging.get_verbosity(), hub_logging.get_verbosity()
    bar_was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hub_logging.set_verbosity_error()
    if not bars:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosities[0])
        hub_logging.set_verbosity(verbosities[1])
        if bar_was_on:
            hf_logging.enable_progress_bar()


@contextmanager
def attributing(model: nn.Module):
    """Inside: the model in eval mode (no dropout: an attribution of a model in training mode was random, its
    delta -0.37 on a small BERT), no autocast of the caller's (fastig's precision decides: a caller's bf16
    autocast made the endpoints bf16 and failed in the accumulation), and outputs with .logits (a config's
    return_dict=False gave tuples; set on the config, as BigBird's classifier reads its own encoder's output
    by name whatever return_dict its call is given); after: each module's mode and the config as they were,
    so that explaining a model mid-training leaves its training as it was."""
    modes = {module: module.training for module in model.modules()}
    config = getattr(model, "config", None)
    tuples = config is not None and getattr(config, "return_dict", True) is False
    model.eval()
    if tuples:
        config.return_dict = True
    try:
        with torch.autocast(next(model.parameters()).device.type, enabled=False):
            yield
    finally:
        for module, training in modes.items():
            module.training = training
        if tuples:
            config.return_dict = False


def forward_overrides(config) -> dict:
    """Arguments of every model call an attribution makes, over what the model's config asks for: no
    attention maps or hidden states (a config's output_attentions or output_hidden_states, for a
    visualization: no part of F, they were kept for the backward, and a Longformer's maps sent it to Hugging
    Face's slow attention, 1.9x the step's time for 2,048 tokens on the 2-core EPYC); no cache in an
    encoder-decoder's decoder (it caches the encoder's keys and values on the way, and a layer recomputed in
    the backward then found its cache filled: torch refused, "a different number of tensors was saved")."""
    overrides = {name: False for name in ("output_attentions", "output_hidden_states") if getattr(config, name, False)}
    if getattr(config, "is_encoder_decoder", False):
        overrides["use_cache"] = False
    return overrides


def load_classifier(name_or_path: str, tokenizer: str | None = None, device=None, trust_remote_code: bool = False):
    """Load (model, tokenizer) from a local folder or a hub name; the model in eval mode.

    `tokenizer` names another folder or hub name for the tokenizer (the seed's
    Longformer uses allenai/longformer-base-4096's tokenizer). A checkpoint without its
    classification head (a base model: the head would be random) is refused, as is one
    whose files cannot be read (corrupt weights, a pickle torch refuses to load).
    trust_remote_code: run the model's own Python code where its config names some (transformers'
    trust_remote_code; never asked interactively), for code you trust.
    """
    from transformers import AutoModelForSequenceClassification

    for what, name in (("model", name_or_path), ("tokenizer", tokenizer)):
        if name is not None and _missing_folder(name):
            raise ModelLoadError(f"{what} {name!r}: no such folder (a hub name is NAME or OWNER/NAME)")
    where = "local folder" if Path(name_or_path).exists() else "folder or hub name (is the hub reachable?)"
    # A weight-loading bar per call buries fastig's own output; missing weights are fastig's error below.
    try:
        with hub_quiet():
            # fp32 weights, whatever dtype the checkpoint was saved in (transformers 5 keeps that one: a
            # float16 checkpoint loaded as float16 failed in the first model call); see check_weights.
            model, info = AutoModelForSequenceClassification.from_pretrained(
                name_or_path, output_loading_info=True, dtype=torch.float32, trust_remote_code=trust_remote_code)
    except Exception as err:     # OSError, ValueError, safetensors' and pickle's own errors: all mean unreadable
        if "trust_remote_code" in str(err) and not trust_remote_code:
            raise ModelLoadError(f"model {name_or_path!r} runs Python code of its own (its config names it): load "
                                 "it with trust_remote_code=True (the commands' --trust-remote-code) if you trust "
                                 "that code") from err
        raise ModelLoadError(f"model {name_or_path!r}: cannot load a sequence classifier from this {where}: "
                             f"{type(err).__name__}: {err}") from err
    missing = sorted(info.get("missing_keys", ()))
    if missing:
        raise ModelLoadError(f"model {name_or_path!r} has no weights for {', '.join(missing[:4])}"
                             f"{' ...' if len(missing) > 4 else ''}: it is not a trained sequence classifier (a base "
                             "model gets a random classification head); give a fine-tuned classifier")
    tok = load_tokenizer(tokenizer or name_or_path, trust_remote_code)
    if device is not None:
        model.to(device)
    return model.eval(), tok


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False):
    """A tokenizer from a local folder or a hub name."""
    from transformers import AutoTokenizer

    if _missing_folder(name_or_path):
        raise ModelLoadError(f"tokenizer {name_or_path!r}: no such folder (a hub name is NAME or OWNER/NAME)")
    try:
        with hub_quiet():
            return AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except Exception as err:
        raise ModelLoadError(f"tokenizer {name_or_path!r}: cannot load a tokenizer: {type(err).__name__}: "
                             f"{err}") from err


def unwrapped(model):
    """The module a DataParallel, DistributedDataParallel or torch.compile wraps (anything else as it is): fastig
    sizes and runs the calls itself, on the module's device. Compiled whole, the model recompiled at each new
    batch and length of the calls (100 s for two reviews on a 2-layer BERT, 0.5 s uncompiled); the step compiles
    with Engine(compile=...)."""
    if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        model = model.module
    if isinstance(model, nn.Module) and isinstance(getattr(model, "_orig_mod", None), nn.Module):
        model = model._orig_mod
    return model


def model_and_tokenizer(model, tokenizer=None) -> tuple[nn.Module, object]:
    """Engine's model and tokenizer as a module and a tokenizer: a folder or hub name is loaded by
    load_classifier (a tokenizer named by a string too), a text-classification pipeline gives its own."""
    named_tokenizer = isinstance(tokenizer, (str, os.PathLike))
    if isinstance(model, (str, os.PathLike)):
        model, loaded = load_classifier(str(model), str(tokenizer) if named_tokenizer else None)
        return model, loaded if tokenizer is None or named_tokenizer else tokenizer
    if not isinstance(model, nn.Module) and isinstance(getattr(model, "model", None), nn.Module):   # a pipeline
        model, tokenizer = model.model, getattr(model, "tokenizer", None) if tokenizer is None else tokenizer
    model = unwrapped(model)
    if not isinstance(model, nn.Module):
        raise ModelLoadError(f"model of type {type(model).__name__}: give a transformers sequence classifier (a "
                             "torch module), its folder or hub name, or a text-classification pipeline")
    if getattr(model, "config", None) is None:      # an AttributeError at the first use of it before
        raise ModelLoadError(f"model of type {type(model).__name__} has no .config: give a transformers sequence "
                             "classifier; a module of your own goes through fastig.captum.LayerIntegratedGradients "
                             "with its forward function")
    if _output_embeddings(model) is not None:
        # A language model (a fill-mask or text-generation pipeline's) scores every vocabulary token at every
        # position: it was taken here and refused at its first call, after the data was read and planned.
        raise ModelLoadError(f"model of type {type(model).__name__} is a language model (its logits score the "
                             "vocabulary at each position): give a sequence classifier; for generated text use "
                             "fastig.llm.attribute_generation")
    return model, load_tokenizer(str(tokenizer)) if named_tokenizer else tokenizer


def _missing_folder(name: str) -> bool:
    """Whether `name` can only mean a local folder (absolute, ./ ../ ~, or with more than one /) and there is
    none: the hub's own error for it speaks of repo ids, not of the folder the user mistyped."""
    return not Path(name).exists() and (Path(name).is_absolute() or name.startswith((".", "~"))
                                         or name.count("/") > 1)


def find_layer(model: nn.Module, layer: str | nn.Module | None = None) -> nn.Module:
    """The module whose output is attributed.

    None picks the embeddings module of the model (BertEmbeddings, LongformerEmbeddings, ...):
    the parent of `get_input_embeddings()` when that parent is an embeddings module,
    otherwise the token embedding itself; an encoder-decoder's (BART, T5): its encoder's token embedding,
    as the shared one `get_input_embeddings()` names never runs in transformers 5 (the default was refused,
    naming the encoder's). A string is a dotted module name.
    """
    if isinstance(layer, nn.Module):
        return layer
    if isinstance(layer, str):
        try:
            return model.get_submodule(layer)
        except AttributeError as err:
            raise LayerNotFoundError(f"layer={layer!r} is not a module of {type(model).__name__}; "
                                     f"for example: {_example_names(model)}") from err
    if layer is not None:
        raise LayerNotFoundError(f"layer={layer!r} must be None, a dotted module name or an nn.Module")
    if getattr(model.config, "is_encoder_decoder", False) and hasattr(model, "get_encoder"):
        encoder_tokens = getattr(model.get_encoder(), "embed_tokens", None)
        if isinstance(encoder_tokens, nn.Module):
            return encoder_tokens
    token_embedding = _input_embeddings(model)
    if token_embedding is None:
        raise LayerNotFoundError(f"{type(model).__name__} has no input embeddings; pass layer='dotted.module.name'")
    for module in model.modules():
        if "embedding" in type(module).__name__.lower() and any(c is token_embedding for c in module.children()):
            return module
    return token_embedding


def _input_embeddings(model: nn.Module) -> nn.Module | None:
    try:
        return model.get_input_embeddings()
    except (AttributeError, NotImplementedError):     # transformers' default raises for models it cannot handle
        return None


def _output_embeddings(model: nn.Module) -> nn.Module | None:
    """A language model's head over the vocabulary; None for classifiers (and modules that cannot say)."""
    try:
        return model.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        return None


def _example_names(model: nn.Module) -> str:
    names = [name for name, _ in model.named_modules() if name.endswith("embeddings")]
    return ", ".join(names[:3]) or "see model.named_modules()"


def model_length(config, length: int) -> int:
    """The length the model computes at for `length` tokens: Longformer pads to its attention window."""
    if config.model_type != "longformer":
        return length
    window = config.attention_window if isinstance(config.attention_window, int) else max(config.attention_window)
    return -(-length // window) * window


def score(logits: torch.Tensor, target: torch.Tensor, output: str) -> torch.Tensor:
    """F of each row: `output` (a resolved one: see `output_values`) of `target`.

    logits: [N, C]; target: [N] long, or [N, T] for T targets per row. Returns [N] (or [N, T]) in
    the dtype of logits.
    """
    picked = output_values(logits, output).gather(1, target.view(len(target), -1))
    return picked.squeeze(1) if target.ndim == 1 else picked


def output_values(logits: torch.Tensor, output: str) -> torch.Tensor:
    """Each class's value of `output`: "probs" softmax over the classes, "sigmoid" each label's own
    probability (a multi-label model's), "logits" the logits."""
    if output == "probs":
        return torch.softmax(logits, dim=-1)
    return torch.sigmoid(logits) if output == "sigmoid" else logits


def is_multi_label(config) -> bool:
    """A model whose labels are each a yes or no of their own (toxicity, emotions, topics): its probabilities are
    each label's sigmoid, and several labels may be predicted."""
    return config.problem_type == "multi_label_classification"


def predicted_labels(probabilities: torch.Tensor) -> list[int]:
    """A multi-label model's predicted labels from its sigmoids [C]: each one above 1/2 (the top one where none
    is: a document always has its prediction explained)."""
    above = (probabilities > 0.5).nonzero().flatten().tolist()
    return above or [int(probabilities.argmax())]


def probability_output(config) -> str:
    """The output that gives the model's probabilities as transformers' text-classification pipeline shows
    them: softmax; each label's sigmoid on a multi-label model or on one label; a regression head's values."""
    if config.problem_type == "regression":
        return "logits"
    if is_multi_label(config) or config.num_labels == 1:
        return "sigmoid"
    return "probs"


def _class_index(value):
    """A target as an int; bools, floats, strings and the like are refused, not read as classes."""
    if isinstance(value, torch.Tensor) and value.ndim == 0 and not value.is_floating_point() \
            and value.dtype != torch.bool:
        value = value.item()
    if value is None or isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return None if value is None else int(value)
    raise TargetError(f"target={value!r} is not a class index: give None (the predicted class), an int, "
                      "one int per document, or several classes: 'all' or one list of classes per document")


def resolve_output(output: str | None, config) -> str:
    """What F is: `output` as asked, or for None the target's probability (the seed's choice), except on a
    one-label model (a regression head, a cross-encoder's score): its logit. "probs" on a multi-label model
    (config.problem_type "multi_label_classification": toxicity, emotions, topics) is each label's sigmoid,
    the probability it was trained to give; a softmax across its labels is no output of that model."""
    if output is None:
        return "logits" if config.num_labels == 1 else probability_output(config)
    if output not in OUTPUTS:
        raise InputError(f"output={output!r} is unknown; allowed: {', '.join(OUTPUTS)}")
    if output == "probs" and config.num_labels == 1:
        raise InputError("output='probs' on a model with one label: its softmax is 1 whatever the input, so every "
                         "attribution would be 0; use output='logits' (--output logits), or 'sigmoid' for a "
                         "score read as a probability")
    if output == "probs" and is_multi_label(config):
        return "sigmoid"
    return output


def check_weights(model: nn.Module) -> None:
    """A classifier's weights must be float32: fastig's precisions run the steps in fp32 or autocast them to
    bf16 or fp16, its sums always fp32. Weights of another dtype (a model loaded with dtype=torch.float16 to
    save memory) failed in the model's first call with torch's dtype mismatch; they are refused, naming the fix."""
    dtypes = sorted({str(p.dtype).removeprefix("torch.") for p in model.parameters() if p.is_floating_point()})
    if dtypes != ["float32"]:
        raise ModelLoadError(f"the model's weights are {', '.join(dtypes)}: fastig runs a classifier's weights in "
                             "float32 and its precision= ('bf16', 'fp16') runs the integration steps in half "
                             "precision with fp32 sums; give model.float(), or load it with from_pretrained(..., "
                             "dtype=torch.float32) (transformers 5 keeps a checkpoint's saved dtype; "
                             "fastig.load_classifier loads float32)")


def check_vocabulary(model: nn.Module, tokenizer) -> None:
    """The tokenizer's ids must all have a row in the model's token embedding."""
    embedding = _input_embeddings(model)
    if tokenizer is None or embedding is None or not hasattr(embedding, "num_embeddings"):
        return
    if len(tokenizer) > embedding.num_embeddings:
        raise ModelLoadError(f"the tokenizer has {len(tokenizer)} tokens but the model embeds only "
                             f"{embedding.num_embeddings}: they do not belong together (give --tokenizer the "
                             "model's own tokenizer)")


def check_target(target, n_docs: int, n_classes: int) -> list[int | None]:
    """One target per document: None (predicted class), an int, or a list/tensor of ints (None in a list:
    that document's predicted class)."""
    if isinstance(target, (list, tuple)) or isinstance(target, torch.Tensor) and target.ndim == 1:
        targets = [_class_index(t) for t in target]
        if len(targets) != n_docs:
            raise TargetError(f"target has {len(targets)} entries for {n_docs} documents; give one per document or one int")
    else:
        targets = [_class_index(target)] * n_docs
    for t in targets:
        if t is not None and not 0 <= t < n_classes:
            raise TargetError(f"target={t} is out of range: the model has {n_classes} classes (0..{n_classes - 1})")
    return targets


def label_names(config) -> dict[str, str]:
    """The model's class names by id as a string ({"0": "negative", ...}: config.id2label), as results and
    data-set runs record them."""
    return {str(i): name for i, name in (getattr(config, "id2label", None) or {}).items()}


def label_ids(config) -> dict[str, int]:
    """The model's label names and their class ids: config.id2label's, the names every output shows
    ("positive", "LABEL_1"), and label2id's where it names others. transformers 5 derives neither from the
    other: a config made with id2label alone has label2id None, one given id2label later keeps LABEL_i."""
    names = {str(name): int(i) for i, name in (getattr(config, "id2label", None) or {}).items()}
    for name, i in (getattr(config, "label2id", None) or {}).items():
        names.setdefault(str(name), int(i))
    return names


def named_classes(target, config, argument: str = "target="):
    """target with the model's label names (label_ids: "positive", "LABEL_1") as class ids, in every
    form target takes ("all" stays the keyword); any other string is refused, naming the labels (and the
    argument as `argument` writes it: the command line's "--target "). An array (a data frame's label column's
    values, a tensor) is taken as its list: a numpy array was refused, a tensor taken."""
    names = label_ids(config)
    if hasattr(target, "tolist") and not isinstance(target, str):
        target = target.tolist()

    def one(value):
        if not isinstance(value, str):
            return value
        if value not in names:
            raise TargetError(f"{argument}{value!r} is not a class index, a label of this model ("
                              f"{', '.join(names) or 'it names none'}) or 'all': give None (the predicted class), "
                              "an int or a label, one per document, 'all', or one list of classes per document")
        return names[value]

    if isinstance(target, str) and target == "all":
        return target
    if isinstance(target, (list, tuple)):
        return [[one(v) for v in t] if isinstance(t, (list, tuple)) else one(t) for t in target]
    return one(target)


def several_targets(target, n_docs: int, n_classes: int) -> list[list[int]] | None:
    """The classes of each document when several are asked for ("all", or one list of classes per
    document, of any lengths: a multi-label model's predicted labels; a [B, T] tensor alike); None for the
    one-target forms of check_target."""
    if isinstance(target, str) and target == "all":
        return [list(range(n_classes))] * n_docs
    if isinstance(target, torch.Tensor) and target.ndim == 2:
        target = target.tolist()
    if not isinstance(target, (list, tuple)) or not any(isinstance(t, (list, tuple, torch.Tensor)) for t in target):
        if isinstance(target, str):
            raise TargetError(f"target={target!r} is not a class index or 'all': give None (the predicted class), "
                              "an int, one int per document, 'all', or one list of classes per document")
        return None
    if len(target) != n_docs or not all(isinstance(t, (list, tuple, torch.Tensor)) for t in target):
        raise TargetError(f"target has {len(target)} entries for {n_docs} documents; several targets are one "
                          "list of classes per document (or 'all')")
    classes = [[_class_index(t) for t in row] for row in target]
    if not all(classes) or any(None in row for row in classes):
        raise TargetError("several targets: every document's list must name 1 or more classes, as ints (None, "
                          "the predicted class, is for one target per document)")
    for row in classes:
        check_target(row, len(row), n_classes)
    return classes


@contextmanager
def output_captured(layer: nn.Module, store: list):
    """Append the layer's output to `store` on every call."""
    def keep(module, args, output):
        store.append(output)

    handle = layer.register_forward_hook(keep)
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def forwards_shadowed(modules: list[nn.Module], forward_of: Callable[[nn.Module], Callable],
                      method: str = "forward"):
    """Each module's `forward` (or other `method`) is `forward_of(module)` inside the block, and its own again after.

    An instance attribute shadows the class's method, so nn.Module.__call__ (and the hooks
    others put on the module) still run; an instance attribute already there is restored.
    """
    shadowed = [module.__dict__.get(method) for module in modules]
    replacements = [forward_of(module) for module in modules]
    for module, forward in zip(modules, replacements):
        setattr(module, method, forward)
    try:
        yield
    finally:
        for module, forward in zip(modules, shadowed):
            if forward is None:
                delattr(module, method)
            else:
                setattr(module, method, forward)


def output_replaced(layer: nn.Module, output: torch.Tensor):
    """The layer returns `output` instead of computing: the rest of the model runs from it.

    Shadowing `forward` rather than hooking the output skips the layer's own work (a
    gather and a LayerNorm over every step) and keeps hooks others put on it working.
    """
    return forwards_shadowed([layer], lambda module: lambda *args, **kwargs: output)


def recomputable_layers(model: nn.Module) -> list[nn.Module]:
    """The transformer layers (transformers' GradientCheckpointingLayer) of a model."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]


def layers_recomputed(model: nn.Module):
    """Each transformer layer keeps only its input for the backward pass and recomputes the rest.

    Activation checkpointing for eval-mode models (transformers' own switch works only in
    training mode): the memory of a step falls from all layers' activations to one layer's,
    for one more forward. Exact in eval mode, where nothing is random.
    """
    def recomputed(layer):
        forward = layer.forward
        return lambda *args, **kwargs: checkpoint(forward, *args, use_reentrant=False, **kwargs)
    return forwards_shadowed(recomputable_layers(model), recomputed)
