"""`fastig.Engine`: layer Integrated Gradients for a Hugging Face classifier, and its result."""

import time
from dataclasses import dataclass, field, replace

import torch
from torch import nn

from . import quadrature
from .errors import BaselineError, InputError, LayerNotFoundError
from .inputs import Document, build_documents
from .integrate import integrate_path
from .models import OUTPUTS, check_target, find_layer, output_captured, output_replaced, score
from .precision import resolve
from .scheduler import chunk_size_for, retain_freed_cpu_memory
from .summarize import RankedToken, token_scores, top_bottom


@dataclass
class Attribution:
    """The result of `Engine.attribute` for B documents, all on CPU.

    attributions: [B, L, H] fp32, or a list of [L_i, H] when lengths differ.
    token_scores: [B, L] (or a list of [L_i]), the seed's normalized token sums.
    tokens: B lists of token strings. input_ids: [B, L] long (or a list of [L_i]).
    delta: [B] convergence delta, sum(attributions) - (F(x) - F(b)).
    prediction: [B] predicted class. probs: [B, C] softmax of the logits at x.
    target: [B] class attributed. output_at_input, output_at_baseline: [B] F(x) and F(b).
    integrand: [B, n_steps] s_k = <dF/dz(z_k), e(x) - e(b)> along the path at `alphas`.
    """
    attributions: torch.Tensor | list
    token_scores: torch.Tensor | list
    tokens: list
    input_ids: torch.Tensor | list
    delta: torch.Tensor
    prediction: torch.Tensor
    probs: torch.Tensor
    target: torch.Tensor
    output_at_input: torch.Tensor
    output_at_baseline: torch.Tensor
    integrand: torch.Tensor
    alphas: torch.Tensor
    n_steps: int
    method: str
    output: str
    stats: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.tokens)

    def top_bottom(self, doc: int = 0, k: int = 20) -> tuple[list[RankedToken], list[RankedToken]]:
        """The k most positive and k most negative tokens of document `doc`."""
        return top_bottom(self.tokens[doc], self.token_scores[doc], k)

    def to_dict(self, k: int = 20) -> dict:
        """JSON-ready summary per document (no hidden-size tensors)."""
        documents = []
        for i in range(len(self)):
            top, bottom = self.top_bottom(i, k)
            documents.append({
                "tokens": self.tokens[i],
                "input_ids": self.input_ids[i].tolist(),
                "token_scores": self.token_scores[i].tolist(),
                "prediction": int(self.prediction[i]),
                "probs": self.probs[i].tolist(),
                "target": int(self.target[i]),
                "output_at_input": float(self.output_at_input[i]),
                "output_at_baseline": float(self.output_at_baseline[i]),
                "delta": float(self.delta[i]),
                "integrand": self.integrand[i].tolist(),
                "top": [vars(t) for t in top],
                "bottom": [vars(t) for t in bottom],
            })
        return {"n_steps": self.n_steps, "method": self.method, "output": self.output,
                "alphas": self.alphas.tolist(), "stats": self.stats, "documents": documents}


def _stack_if_even(rows: list[torch.Tensor]):
    return torch.stack(rows) if len({r.shape for r in rows}) == 1 else rows


class Engine:
    """Integrated Gradients on a layer of a sequence classifier (by default its embeddings).

    model: a Hugging Face sequence classifier (put in eval mode). tokenizer: its tokenizer,
    or None when inputs are ids. layer: None (the embeddings module), a dotted module name
    or a module. precision: "fp32", "bf16" or "fp16" for the model's forward during the
    steps (accumulation is always fp32), or "auto" (bf16 or fp16 on GPUs, fp32 on CPU; see
    fastig.precision). device: where to run; None keeps the model where it is.
    """

    def __init__(self, model: nn.Module, tokenizer=None, layer: str | nn.Module | None = None,
                 precision: str = "auto", device=None):
        self.precision = resolve(precision, torch.device(device) if device is not None
                                 else next(model.parameters()).device)
        if device is not None:
            model.to(device)
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.layer = find_layer(model, layer)
        self.device = next(model.parameters()).device

    def documents(self, texts_or_ids, baseline="pad", max_length: int | None = None) -> list[Document]:
        """The documents `attribute` would build: ids, baselines, model arguments, tokens."""
        return build_documents(texts_or_ids, self.tokenizer, self.model.config, baseline, max_length)

    def attribute(self, texts_or_ids, target=None, n_steps: int = 50, method: str = "gausslegendre",
                  baseline="pad", output: str = "probs", chunk_size: int | None = None,
                  max_length: int | None = None, progress: bool = False) -> Attribution:
        """Attribute F = output[target] of each document to the layer's output.

        texts_or_ids: a str, a list of str, or a LongTensor [B, L] / [L] of ids holding the
        special tokens. target: None (predicted class), an int, or one int per document.
        baseline: "pad" | "unk" | "mask" (CLS + token * n + SEP), "zeros" (zero layer
        output), a LongTensor of ids like the input, or a FloatTensor [L', H] layer output.
        output: "probs" (softmax, the seed's choice) or "logits". chunk_size: steps per
        model call (None: sized from the length). max_length: text tokens kept per text.
        """
        if output not in OUTPUTS:
            raise InputError(f"output={output!r} is unknown; allowed: {', '.join(OUTPUTS)}")
        alphas, weights = quadrature.rule(method, n_steps)
        docs = self.documents(texts_or_ids, baseline, max_length)
        targets = check_target(target, len(docs), self.model.config.num_labels)
        retains_memory = self.device.type == "cpu" and retain_freed_cpu_memory()

        bar = None
        if progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=len(docs) * n_steps, unit="step", desc="attributing")
        try:
            # Parameters keep requires_grad: autograd.grad(F, z) already skips weight gradients, and
            # freezing them made HF Longformer's sliding-chunk attention 1.6x slower on CPU.
            per_doc = [self._attribute_one(doc, t, alphas, weights, output, chunk_size, bar)
                       for doc, t in zip(docs, targets)]
        finally:
            if bar is not None:
                bar.close()

        seconds = {k: sum(d["seconds"][k] for d in per_doc) for k in per_doc[0]["seconds"]}
        token_steps = sum(d["layer_length"] for d in per_doc) * n_steps
        stats = {"device": str(self.device), "precision": self.precision.name,
                 "fallbacks": sum(d["fallbacks"] for d in per_doc), "retains_cpu_memory": retains_memory,
                 "chunk_size": [d["chunk_size"] for d in per_doc], "seconds": seconds,
                 "token_steps_per_s": token_steps / max(seconds["total"], 1e-12)}
        column = lambda key: torch.stack([d[key] for d in per_doc])  # noqa: E731
        return Attribution(
            attributions=_stack_if_even([d["attributions"] for d in per_doc]),
            token_scores=_stack_if_even([d["token_scores"] for d in per_doc]),
            tokens=[doc.tokens for doc in docs],
            input_ids=_stack_if_even([doc.input_ids for doc in docs]),
            delta=column("delta"), prediction=column("prediction"), probs=column("probs"),
            target=column("target"), output_at_input=column("output_at_input"),
            output_at_baseline=column("output_at_baseline"), integrand=column("integrand"),
            alphas=alphas, n_steps=n_steps, method=method, output=output, stats=stats)

    def _on_device(self, doc: Document) -> Document:
        """The document's tensors moved once, so no step copies anything from the host."""
        to = lambda t: t.to(self.device) if isinstance(t, torch.Tensor) else t  # noqa: E731
        return replace(doc, input_ids=to(doc.input_ids), baseline_ids=to(doc.baseline_ids),
                       baseline_embedding=to(doc.baseline_embedding),
                       model_kwargs={k: to(v) for k, v in doc.model_kwargs.items()})

    @staticmethod
    def _model_kwargs(doc: Document, batch: int) -> dict:
        # Expanded views: every step shares the same mask memory.
        return {k: v.unsqueeze(0).expand(batch, -1) for k, v in doc.model_kwargs.items()}

    def _logits_from_layer(self, doc: Document, z: torch.Tensor) -> torch.Tensor:
        """Logits [c, C] of the model whose layer outputs z [c, L', H] for the document's ids (on device)."""
        ids = doc.input_ids.unsqueeze(0).expand(len(z), -1)
        with output_replaced(self.layer, z):
            return self.model(input_ids=ids, **self._model_kwargs(doc, len(z))).logits

    def _endpoints(self, doc: Document) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Layer outputs e(x), e(b) [L', H] fp32 and logits at x and b [C], from real forwards.

        doc: a document on the engine's device."""
        ids = doc.input_ids.unsqueeze(0)
        if doc.baseline_ids is not None:
            ids = torch.stack([doc.input_ids, doc.baseline_ids])
        captured = []
        with torch.no_grad(), output_captured(self.layer, captured):
            logits = self.model(input_ids=ids, **self._model_kwargs(doc, len(ids))).logits
        layer_output = captured[-1]
        if not isinstance(layer_output, torch.Tensor) or layer_output.ndim != 3 or layer_output.shape[1] < len(doc.input_ids):
            shape = tuple(layer_output.shape) if isinstance(layer_output, torch.Tensor) else type(layer_output).__name__
            raise LayerNotFoundError(f"the layer's output is {shape}; token attribution needs a tensor "
                                     "[batch, length, hidden]: pass layer= an embeddings-like module")
        layer_output = layer_output.float()
        end = layer_output[0]
        if doc.baseline_ids is not None:
            return end, layer_output[1], logits[0], logits[1]
        start = doc.baseline_embedding
        if isinstance(start, float):
            start = torch.full_like(end, start)
        start = start.float()
        if start.shape != end.shape:
            raise BaselineError(f"baseline embedding of shape {tuple(start.shape)} does not match the layer "
                                f"output of shape {tuple(end.shape)} for this input")
        with torch.no_grad():
            baseline_logits = self._logits_from_layer(doc, start.unsqueeze(0))
        return end, start, logits[0], baseline_logits[0]

    def _attribute_one(self, doc: Document, target, alphas, weights, output, chunk_size, bar) -> dict:
        t0 = time.perf_counter()
        doc = self._on_device(doc)
        end, start, logits_x, logits_b = self._endpoints(doc)
        prediction = int(logits_x.argmax())
        target = prediction if target is None else target
        target_index = torch.tensor([target], device=self.device)
        f_x, f_b = score(torch.stack([logits_x, logits_b]).float(), target_index.expand(2), output)
        t1 = time.perf_counter()

        chunk = chunk_size_for(end.shape[0], len(alphas), chunk_size)
        targets = target_index.expand(chunk)

        def score_from_layer(z):
            return score(self._logits_from_layer(doc, z).float(), targets[: len(z)], output)

        path = integrate_path(score_from_layer, start, end, alphas, weights, chunk,
                              on_chunk=bar.update if bar is not None else None, precision=self.precision)
        t2 = time.perf_counter()
        full = (end - start) * path.gradient_sum                # [L', H]; L' > L when the model pads
        delta = full.sum() - (f_x - f_b)
        attributions = full[: len(doc.input_ids)].cpu()
        seconds = {"endpoints": t1 - t0, **path.seconds, "finalize": time.perf_counter() - t2}
        seconds["total"] = time.perf_counter() - t0
        return {"attributions": attributions, "token_scores": token_scores(attributions),
                "delta": delta.cpu(), "prediction": torch.tensor(prediction), "target": torch.tensor(target),
                "probs": torch.softmax(logits_x.float(), -1).cpu(), "output_at_input": f_x.cpu(),
                "output_at_baseline": f_b.cpu(), "integrand": path.integrand.cpu(),
                "layer_length": end.shape[0], "chunk_size": chunk, "seconds": seconds,
                "fallbacks": path.fallbacks}
