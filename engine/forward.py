"""Running the model for one group of documents: the endpoints of their paths, and the model step.

The endpoints come from one forward of inputs and baselines together, stopped once the layer has
given e(x) and e(b) (a hook captures them), and one more of both from the layer on with the inputs'
ids, as the path's points run, for F(x) and F(b): Captum's two passes for the delta, and two fewer
for the layer outputs. The model
step is F at interpolated layer outputs z: the layer's own forward is shadowed to return z, the
rest of the model runs from there (its transformer layers recomputed in the backward pass when
the memory budget asks for it), and the target's probability or logit is read off the logits.
"""

from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from .compiled import layers_compiled
from .errors import BaselineError, InputError, LayerNotFoundError, ModelLoadError
from .inputs import Document
from .models import forward_overrides, layers_recomputed, output_captured, output_replaced, score
from .scheduler import Scheduler


@dataclass
class Batch:
    """A group of documents padded to one length, on the engine's device.

    input_ids, baseline_ids (or None): [G, L] long. model_kwargs: tensors [G, L].
    lengths: each document's own number of tokens.
    """
    input_ids: torch.Tensor
    baseline_ids: torch.Tensor | None
    model_kwargs: dict
    lengths: list


def batch_of(docs: list[Document], pad_id: int, device: torch.device) -> Batch:
    """The group's ids, baseline ids and model arguments padded to its longest, on `device`.

    Padding is the pad token with attention mask 0, as a tokenizer pads a batch: the
    real tokens' outputs, and so their attributions, do not change.
    """
    length = max(len(doc.input_ids) for doc in docs)

    def padded(rows, fill):
        return torch.stack([nn.functional.pad(row, (0, length - len(row)), value=fill) for row in rows]).to(device)
    baseline_ids = None
    if docs[0].baseline_ids is not None:
        baseline_ids = padded([doc.baseline_ids for doc in docs], pad_id)
    return Batch(input_ids=padded([doc.input_ids for doc in docs], pad_id), baseline_ids=baseline_ids,
                 model_kwargs={k: padded([doc.model_kwargs[k] for doc in docs], 0) for k in docs[0].model_kwargs},
                 lengths=[len(doc.input_ids) for doc in docs])


def _logits(model: nn.Module, input_ids: torch.Tensor, kwargs: dict) -> torch.Tensor:
    try:
        output = model(input_ids=input_ids, **kwargs, **forward_overrides(model.config))
    except ValueError as err:
        if "no padding token" not in str(err):
            raise
        raise InputError(f"model.config.pad_token_id is None: {type(model).__name__} finds each sequence's last "
                         "token by it, and attribution runs sequences in batches; set it (a GPT-2 classifier's is "
                         "usually tokenizer.eos_token_id, as in its fine-tuning)") from err
    logits = getattr(output, "logits", None)
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or len(logits) != len(input_ids):
        # A token classifier's or a masked LM's [B, L, C] failed in an index, a base model's output in .logits
        what = f"logits of shape {list(logits.shape)}" if isinstance(logits, torch.Tensor) else \
            f"a {type(output).__name__} without logits"
        raise ModelLoadError(f"{type(model).__name__} gives {what}: fastig explains sequence classifiers, whose "
                             "logits are [batch, classes] (a transformers ...ForSequenceClassification); for "
                             "another output, fastig.captum.LayerIntegratedGradients takes a forward function "
                             "giving one score per example")
    return logits


def logits_from_layer(model: nn.Module, layer: nn.Module, batch: Batch, z: torch.Tensor,
                      rows: torch.Tensor) -> torch.Tensor:
    """Logits [c, C] of the model whose layer outputs z [c, L', H]; row i is document rows[i] of the batch."""
    with output_replaced(layer, z):
        return _logits(model, batch.input_ids[rows], {k: v[rows] for k, v in batch.model_kwargs.items()})


@dataclass
class Endpoints:
    """The two ends of each document's path and the model's outputs there.

    end, start: [G, L', H] fp32 layer outputs e(x), e(b). logits_x: [G, C] at the inputs.
    target: [G] long, the class attributed ([G, T] for T targets per document). f_x, f_b: [G] (or [G, T])
    fp32, F(x) and F(b).
    """
    end: torch.Tensor
    start: torch.Tensor
    logits_x: torch.Tensor
    target: torch.Tensor
    f_x: torch.Tensor
    f_b: torch.Tensor

    @property
    def targets_each(self) -> int:
        return self.target.shape[1] if self.target.ndim == 2 else 1

    def pairs(self) -> "Endpoints":
        """One path per (document, target) pair, document-major: e(x) and e(b) repeated per target, and
        F [G * T] of each pair."""
        count = self.targets_each
        return Endpoints(self.end.repeat_interleave(count, 0), self.start.repeat_interleave(count, 0),
                         self.logits_x.repeat_interleave(count, 0), self.target.reshape(-1),
                         self.f_x.reshape(-1), self.f_b.reshape(-1))


def _ran_once(captured: list, model: nn.Module) -> None:
    # An encoder-decoder's shared token embedding runs never (transformers 5: the encoder and decoder have their
    # own modules) or twice (both sides read it): one output of the layer is what a path can replace.
    if len(captured) != 1:
        encoders = [name for name, _ in model.named_modules() if name.endswith("encoder.embed_tokens")]
        example = f"the encoder's embeddings, layer={encoders[0]!r}" if encoders else "an embeddings-like module"
        raise LayerNotFoundError(f"the layer ran {len(captured)} times in one forward of the model; attribution "
                                 f"needs a layer that runs once: pass layer= one that does ({example})")


def _layer_output(captured: list, ids: torch.Tensor, model: nn.Module) -> torch.Tensor:
    _ran_once(captured, model)
    layer_output = captured[0]
    if not isinstance(layer_output, torch.Tensor) or layer_output.ndim != 3 or layer_output.shape[1] < ids.shape[1]:
        shape = tuple(layer_output.shape) if isinstance(layer_output, torch.Tensor) else type(layer_output).__name__
        raise LayerNotFoundError(f"the layer's output is {shape}; token attribution needs a tensor "
                                 "[batch, length, hidden]: pass layer= an embeddings-like module")
    return layer_output.float()


def _embedding_baselines(end: torch.Tensor, docs: list[Document], lengths: list) -> torch.Tensor:
    """e(b) [G, L', H] of documents whose baseline is a layer output (0.0 for "zeros", or [L', H])."""
    start = end.clone()      # positions past a document's own length keep e(x): nothing to attribute there
    for row, (doc, length) in enumerate(zip(docs, lengths)):
        embedding = doc.baseline_embedding
        if isinstance(embedding, float):
            start[row, :length] = embedding
        elif embedding.shape != end.shape[1:]:
            raise BaselineError(f"baseline embedding of shape {tuple(embedding.shape)} does not match the layer "
                                f"output of shape {tuple(end.shape[1:])} for this input")
        else:
            start[row] = embedding.to(end.device).float()
    return start


class _LayerReached(Exception):
    """Raised by a hook on the layer: the forward has given what it was run for."""


def _layer_outputs(model: nn.Module, layer: nn.Module, ids: torch.Tensor, kwargs: dict) -> torch.Tensor:
    """The layer's output [B, L', H] fp32 for ids, from a forward that stops once the layer has run."""
    captured = []

    def stop(module, args, output):
        captured.append(output)
        raise _LayerReached

    handle = layer.register_forward_hook(stop)
    try:
        _logits(model, ids, kwargs)
    except _LayerReached:
        pass
    finally:
        handle.remove()
    return _layer_output(captured, ids, model)


def layer_width(model: nn.Module, layer: nn.Module, doc: Document) -> int:
    """H, the size of the layer's output per token, from a forward of one document that stops at the layer."""
    batch = batch_of([doc], model.config.pad_token_id or 0, next(model.parameters()).device)
    with torch.no_grad():
        return _layer_outputs(model, layer, batch.input_ids, batch.model_kwargs).shape[-1]


def document_logits(model: nn.Module, doc: Document) -> torch.Tensor:
    """Logits [1, C] of one document, a forward of its ids (no gradients are kept)."""
    batch = batch_of([doc], model.config.pad_token_id or 0, next(model.parameters()).device)
    with torch.no_grad():
        return _logits(model, batch.input_ids, batch.model_kwargs)


def endpoints(model: nn.Module, layer: nn.Module, batch: Batch, docs: list[Document], targets: list,
              output: str) -> Endpoints:
    """e(x), e(b), the logits and F at both ends. targets: a class id or None (the predicted class) per
    document, or a list of T classes per document.

    e(x) and e(b) come from forwards of the ids that stop at the layer; F(x) and F(b) from one forward of
    both from the layer on, with the inputs' ids, as every point of the path runs: where the model reads
    the ids past the layer too (a decoder's last-token pooling; an encoder-decoder's decoder), F(b) is then
    the path's start, and the convergence delta measures the integral, as a forward of the baseline ids
    would not.
    """
    group = len(batch.lengths)
    ids, kwargs = batch.input_ids, batch.model_kwargs
    if batch.baseline_ids is not None:
        ids = torch.cat([ids, batch.baseline_ids])
        kwargs = {k: torch.cat([v, v]) for k, v in kwargs.items()}
    captured = []
    with torch.no_grad():
        layer_output = _layer_outputs(model, layer, ids, kwargs)
        end = layer_output[:group]
        start = layer_output[group:] if batch.baseline_ids is not None else \
            _embedding_baselines(end, docs, batch.lengths)
        both = torch.arange(group, device=end.device).repeat(2)
        with output_captured(layer, captured):
            logits_x, logits_b = logits_from_layer(model, layer, batch, torch.cat([end, start]), both).chunk(2)
    _ran_once(captured, model)      # a layer the model runs twice would take the path's point both times
    predictions = logits_x.argmax(-1).tolist()
    target = torch.tensor([p if t is None else t for t, p in zip(targets, predictions)], device=end.device)
    f_x, f_b = score(torch.cat([logits_x, logits_b]).float(), torch.cat([target, target]), output).chunk(2)
    return Endpoints(end, start, logits_x, target, f_x, f_b)


@dataclass
class ModelStep:
    """F [c] (or [c, T]) at layer outputs z [c, L', H] of rows `rows` [c] of the batch: the model run from the layer
    on, differentiable in z; each transformer layer recomputed in the backward pass while the
    scheduler says so (its first probe may switch it on or off during the run); with compile_mode, each
    layer through torch.compile in that mode (fastig.compiled)."""
    model: nn.Module
    layer: nn.Module
    batch: Batch
    target: torch.Tensor
    output: str
    scheduler: Scheduler
    compile_mode: str | None = None

    def __call__(self, z: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        recompute = self.scheduler.recompute_layers
        # The checkpoint inside the compiled layer, compile(checkpoint(layer)): the recomputation is part of the
        # compiled graph. The other way round the recomputation ran another compiled graph than the forward had
        # (a recompilation for dynamic shapes), which torch refuses (pytorch#166926). A layer with a graph break
        # cannot be compiled over its checkpoint: Longformer's broke at its global tokens until they were read
        # before the layers (fastig.longformer.BandsOfForward, fastig.first_token).
        with (layers_recomputed(self.model) if recompute else nullcontext(),
              layers_compiled(self.model, self.compile_mode) if self.compile_mode else nullcontext()):
            logits = logits_from_layer(self.model, self.layer, self.batch, z, rows)
        return score(logits.float(), self.target[rows], self.output)
