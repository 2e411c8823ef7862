"""`fastig.Engine`: layer Integrated Gradients for a Hugging Face classifier, and its result."""

import time
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from torch import nn

from . import kernels, quadrature
from .adaptive import INITIAL_POINTS, check_auto, integrate_adaptive
from .errors import BaselineError, InputError, LayerNotFoundError
from .inputs import Document, build_documents
from .integrate import integrate_path
from .longformer import banded_attention
from .models import (OUTPUTS, check_target, find_layer, layers_recomputed, model_length, output_captured,
                     output_replaced, recomputable_layers, score)
from .precision import resolve
from .scheduler import DEFAULT_MEMORY_BUDGET, Scheduler, chunk_size_override, pack, retain_freed_cpu_memory
from .summarize import RankedToken, normalized, top_bottom


@dataclass
class Attribution:
    """The result of `Engine.attribute` for B documents, all on CPU.

    attributions: [B, L, H] fp32, or a list of [L_i, H] when lengths differ.
    token_scores: [B, L] (or a list of [L_i]), the seed's normalized token sums.
    tokens: B lists of token strings. input_ids: [B, L] long (or a list of [L_i]).
    delta: [B] convergence delta, sum(attributions) - (F(x) - F(b)).
    prediction: [B] predicted class. probs: [B, C] softmax of the logits at x.
    target: [B] class attributed. output_at_input, output_at_baseline: [B] F(x) and F(b).
    integrand: [B, n_steps] s_k = <dF/dz(z_k), e(x) - e(b)> along the path at `alphas` [n_steps].
    With n_steps="auto", alphas is a list of each document's points and integrand a list (or
    [B, n] when all used the same number of points).
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
    integrand: torch.Tensor | list
    alphas: torch.Tensor | list
    n_steps: int | str
    method: str
    output: str
    stats: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.tokens)

    def top_bottom(self, doc: int = 0, k: int = 20) -> tuple[list[RankedToken], list[RankedToken]]:
        """The k most positive and k most negative tokens of document `doc`."""
        return top_bottom(self.tokens[doc], self.token_scores[doc], k)

    def to_captum_record(self, doc: int = 0, true_label=None):
        """Document `doc` as captum.attr.visualization.VisualizationDataRecord, for visualize_text."""
        from captum.attr import visualization

        prediction = int(self.prediction[doc])
        return visualization.VisualizationDataRecord(self.token_scores[doc], float(self.probs[doc, prediction]), prediction,
                                       true_label, int(self.target[doc]), float(self.token_scores[doc].sum()),
                                       self.tokens[doc], float(self.delta[doc]))

    def _repr_html_(self) -> str:
        """Captum's visualize_text table of every document, for notebooks."""
        from .report import captum_record_table, records_from_result

        return captum_record_table(records_from_result(self.to_dict()), {})

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
                **({"alphas": self.alphas[i].tolist()} if isinstance(self.alphas, list) else {}),
                "top": [vars(t) for t in top],
                "bottom": [vars(t) for t in bottom],
            })
        return {"n_steps": self.n_steps, "method": self.method, "output": self.output,
                "alphas": None if isinstance(self.alphas, list) else self.alphas.tolist(), "stats": self.stats,
                "documents": documents}


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


def _packing_key(doc: Document):
    """Documents share model calls only with the same kind of baseline: ids, or a constant layer output."""
    if doc.baseline_ids is not None:
        return "ids"
    return None if isinstance(doc.baseline_embedding, torch.Tensor) else doc.baseline_embedding


def _stack_if_even(rows: list[torch.Tensor]):
    return torch.stack(rows) if len({r.shape for r in rows}) == 1 else rows


ATTENTIONS = ("banded", "model")


class Engine:
    """Integrated Gradients on a layer of a sequence classifier (by default its embeddings).

    model: a Hugging Face sequence classifier (put in eval mode). tokenizer: its tokenizer,
    or None when inputs are ids. layer: None (the embeddings module), a dotted module name
    or a module. precision: "fp32", "bf16" or "fp16" for the model's forward during the
    steps (accumulation is always fp32), or "auto" (bf16 or fp16 on GPUs, fp32 on CPU; see
    fastig.precision). memory_budget: the peak memory the attribution may reach, in bytes
    (an int, or "6GB", "512MiB") or as a share of the memory free now ("80%", the default
    for None); on CPU it bounds the process's resident memory, on CUDA the memory torch
    allocates on the device. device: where to run; None keeps the model where it is.
    attention: "banded" runs Longformer self-attention as blocked banded attention during
    attribution (fastig.longformer: the same function, faster, less memory); "model" keeps
    the model's own. Other models are not affected.
    """

    def __init__(self, model: nn.Module, tokenizer=None, layer: str | nn.Module | None = None,
                 precision: str = "auto", memory_budget=None, device=None, attention: str = "banded"):
        if attention not in ATTENTIONS:
            raise InputError(f"attention={attention!r} is unknown; allowed: {', '.join(ATTENTIONS)}")
        self.attention = attention
        self.precision = resolve(precision, torch.device(device) if device is not None
                                 else next(model.parameters()).device)
        if device is not None:
            model.to(device)
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.layer = find_layer(model, layer)
        self.device = next(model.parameters()).device
        self.scheduler = Scheduler(self.device, DEFAULT_MEMORY_BUDGET if memory_budget is None else memory_budget,
                                   recomputable_layers=len(recomputable_layers(model)))
        # fastig.distributed.StepShare when several processes share each document's steps (see there).
        self.steps_share = None

    def documents(self, texts_or_ids, baseline="pad", max_length: int | None = None) -> list[Document]:
        """The documents `attribute` would build: ids, baselines, model arguments, tokens."""
        return build_documents(texts_or_ids, self.tokenizer, self.model.config, baseline, max_length)

    def attribute(self, texts_or_ids, target=None, n_steps: int | str = 50, method: str = "gausslegendre",
                  baseline="pad", output: str = "probs", chunk_size: int | None = None,
                  max_length: int | None = None, progress: bool = False, tolerance: float = 1e-3,
                  max_steps: int = 1024) -> Attribution:
        """Attribute F = output[target] of each document to the layer's output.

        texts_or_ids: a str, a list of str, or a LongTensor [B, L] / [L] of ids holding the
        special tokens. target: None (predicted class), an int, or one int per document.
        baseline: "pad" | "unk" | "mask" (CLS + token * n + SEP), "zeros" (zero layer
        output), a LongTensor of ids like the input, or a FloatTensor [L', H] layer output.
        output: "probs" (softmax, the seed's choice) or "logits". chunk_size: sequences
        (document steps) per model call instead of the memory budget's choice.
        max_length: text tokens kept per text. Documents of similar length share model
        calls; each result equals the one the document gets alone.
        n_steps="auto": adaptive quadrature (fastig.adaptive) per document until
        |delta| <= tolerance * |F(x) - F(b)| or max_steps model evaluations; `method` is not
        used then. The result's alphas and integrand are per document, and stats hold the
        evaluations used and whether the tolerance was met.
        """
        if output not in OUTPUTS:
            raise InputError(f"output={output!r} is unknown; allowed: {', '.join(OUTPUTS)}")
        chunk_size_override(chunk_size)
        auto = None
        if n_steps == "auto":
            check_auto(tolerance, max_steps)
            auto, method = (tolerance, max_steps), "auto"
            alphas = weights = None
        else:
            alphas, weights = quadrature.rule(method, n_steps)
        steps_per_document = INITIAL_POINTS if auto else n_steps      # what packing plans with
        docs = self.documents(texts_or_ids, baseline, max_length)
        targets = check_target(target, len(docs), self.model.config.num_labels)
        retains_memory = self.device.type == "cpu" and retain_freed_cpu_memory()
        self.scheduler.start_run()

        bar = None
        if progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=None if auto else len(docs) * n_steps, unit="step", desc="attributing")
        per_doc, groups = [None] * len(docs), []
        # Longest first: the first call at a length probes its memory, and shorter ones scale from it.
        model_lengths = [model_length(self.model.config, len(doc.input_ids)) for doc in docs]
        order = sorted(range(len(docs)), key=lambda i: -model_lengths[i])
        lengths, keys = [model_lengths[i] for i in order], [_packing_key(docs[i]) for i in order]
        try:
            with banded_attention(self.model) if self.attention == "banded" else nullcontext():
                first = 0
                while first < len(order):
                    sequences = self.scheduler.sequences_per_call(lengths[first], chunk_size)
                    count = pack(lengths[first:], keys[first:], sequences, steps_per_document)
                    if self.steps_share is not None:    # the processes' budgets differ; their groups must not
                        count = self.steps_share.agree(count)
                    group, first = order[first:first + count], first + count
                    # Parameters keep requires_grad: autograd.grad(F, z) already skips weight gradients, and
                    # freezing them made HF Longformer's sliding-chunk attention 1.6x slower on CPU.
                    results, group_stats = self._attribute_group([docs[i] for i in group], [targets[i] for i in group],
                                                                 alphas, weights, output, chunk_size, bar, auto)
                    groups.append(group_stats)
                    for i, result in zip(group, results):
                        per_doc[i] = result
        finally:
            if bar is not None:
                bar.close()

        seconds = {k: sum(g["seconds"][k] for g in groups) for k in groups[0]["seconds"]}
        token_steps = sum(len(doc.input_ids) * d["evaluations"] for doc, d in zip(docs, per_doc))
        stats = {"device": str(self.device), "precision": self.precision.name, "attention": self.attention,
                 "fallbacks": sum(g["fallbacks"] for g in groups), "retains_cpu_memory": retains_memory,
                 "documents_per_group": [g["documents"] for g in groups],
                 "chunk_size": [max(g["sequences_per_call"]) for g in groups],
                 "model_calls": sum(len(g["sequences_per_call"]) for g in groups),
                 **self.scheduler.run_stats(), "seconds": seconds,
                 "token_steps_per_s": token_steps / max(seconds["total"], 1e-12)}
        if auto:
            stats.update(tolerance=tolerance, max_steps=max_steps, evaluations=[d["evaluations"] for d in per_doc],
                         tolerance_met=[d["tolerance_met"] for d in per_doc],
                         evaluations_allowed=[d["max_steps"] for d in per_doc])
        column = lambda key: torch.stack([d[key] for d in per_doc])  # noqa: E731
        return Attribution(
            attributions=_stack_if_even([d["attributions"] for d in per_doc]),
            token_scores=_stack_if_even([d["token_scores"] for d in per_doc]),
            tokens=[doc.tokens for doc in docs],
            input_ids=_stack_if_even([doc.input_ids for doc in docs]),
            delta=column("delta"), prediction=column("prediction"), probs=column("probs"),
            target=column("target"), output_at_input=column("output_at_input"),
            output_at_baseline=column("output_at_baseline"),
            integrand=_stack_if_even([d["integrand"] for d in per_doc]) if auto else column("integrand"),
            alphas=[d["alphas"] for d in per_doc] if auto else alphas, n_steps=n_steps, method=method, output=output,
            stats=stats)

    def _batch(self, docs: list[Document]) -> Batch:
        """The group's ids, baseline ids and model arguments padded to its longest, on the device.

        Padding is the pad token with attention mask 0, as a tokenizer pads a batch: the
        real tokens' outputs, and so their attributions, do not change.
        """
        length = max(len(doc.input_ids) for doc in docs)
        pad_id = self.model.config.pad_token_id or 0
        padded = lambda rows, fill: torch.stack([  # noqa: E731
            nn.functional.pad(row, (0, length - len(row)), value=fill) for row in rows]).to(self.device)
        baseline_ids = None
        if docs[0].baseline_ids is not None:
            baseline_ids = padded([doc.baseline_ids for doc in docs], pad_id)
        return Batch(input_ids=padded([doc.input_ids for doc in docs], pad_id), baseline_ids=baseline_ids,
                     model_kwargs={k: padded([doc.model_kwargs[k] for doc in docs], 0) for k in docs[0].model_kwargs},
                     lengths=[len(doc.input_ids) for doc in docs])

    def _logits_from_layer(self, batch: Batch, z: torch.Tensor, docs: torch.Tensor) -> torch.Tensor:
        """Logits [c, C] of the model whose layer outputs z [c, L', H]; row i is document docs[i] of the batch."""
        with output_replaced(self.layer, z):
            return self.model(input_ids=batch.input_ids[docs],
                              **{k: v[docs] for k, v in batch.model_kwargs.items()}).logits

    def _endpoints(self, batch: Batch, docs: list[Document]) -> tuple[torch.Tensor, ...]:
        """Layer outputs e(x), e(b) [G, L', H] fp32 and logits at x and b [G, C], from real forwards."""
        group = len(batch.lengths)
        ids, kwargs = batch.input_ids, batch.model_kwargs
        if batch.baseline_ids is not None:
            ids = torch.cat([ids, batch.baseline_ids])
            kwargs = {k: torch.cat([v, v]) for k, v in kwargs.items()}
        captured = []
        with torch.no_grad(), output_captured(self.layer, captured):
            logits = self.model(input_ids=ids, **kwargs).logits
        layer_output = captured[-1]
        if not isinstance(layer_output, torch.Tensor) or layer_output.ndim != 3 or layer_output.shape[1] < ids.shape[1]:
            shape = tuple(layer_output.shape) if isinstance(layer_output, torch.Tensor) else type(layer_output).__name__
            raise LayerNotFoundError(f"the layer's output is {shape}; token attribution needs a tensor "
                                     "[batch, length, hidden]: pass layer= an embeddings-like module")
        layer_output = layer_output.float()
        end = layer_output[:group]
        if batch.baseline_ids is not None:
            return end, layer_output[group:], logits[:group], logits[group:]
        start = end.clone()      # positions past a document's own length keep e(x): nothing to attribute there
        for row, (doc, length) in enumerate(zip(docs, batch.lengths)):
            embedding = doc.baseline_embedding
            if isinstance(embedding, float):
                start[row, :length] = embedding
            elif embedding.shape != end.shape[1:]:
                raise BaselineError(f"baseline embedding of shape {tuple(embedding.shape)} does not match the layer "
                                    f"output of shape {tuple(end.shape[1:])} for this input")
            else:
                start[row] = embedding.to(self.device).float()
        with torch.no_grad():
            baseline_logits = self._logits_from_layer(batch, start, torch.arange(group, device=self.device))
        return end, start, logits[:group], baseline_logits

    def _attribute_group(self, docs: list[Document], targets: list, alphas, weights, output, chunk_size,
                         bar, auto: tuple | None = None) -> tuple[list[dict], dict]:
        """The group's results; auto = (tolerance, max_steps) integrates adaptively instead of by alphas, weights."""
        t0 = time.perf_counter()
        batch = self._batch(docs)
        end, start, logits_x, logits_b = self._endpoints(batch, docs)
        predictions = logits_x.argmax(-1)
        target_index = torch.tensor([int(p) if t is None else t for t, p in zip(targets, predictions.tolist())],
                                    device=self.device)
        f_x, f_b = score(torch.cat([logits_x, logits_b]).float(), target_index.repeat(2), output).chunk(2)
        t1 = time.perf_counter()

        def score_from_layer(z, rows):
            with layers_recomputed(self.model) if self.scheduler.recompute_layers else nullcontext():
                return score(self._logits_from_layer(batch, z, rows).float(), target_index[rows], output)

        def run_path(path_start, path_end, path_alphas, path_weights, rows_doc=None, share=self.steps_share):
            """The step loop over paths whose rows belong to documents rows_doc (None: one path per document);
            with several processes, each takes its share of the steps and the sums are over all."""
            score_rows = score_from_layer if rows_doc is None else lambda z, rows: score_from_layer(z, rows_doc[rows])
            mine = slice(None) if share is None else share.steps(len(path_alphas))
            path = integrate_path(score_rows, path_start, path_end, path_alphas[mine], path_weights[mine],
                                  self.scheduler, chunk_size, on_chunk=bar.update if bar is not None else None,
                                  precision=self.precision)
            if share is not None:
                for name in ("integrand", "outputs"):
                    every_step = torch.zeros(len(path_start), len(path_alphas), device=self.device)
                    every_step[:, mine] = getattr(path, name)
                    setattr(path, name, share.sum(every_step))
                share.sum(path.gradient_sum)
            return path

        point_bytes = end[0].numel() * 4    # n_steps="auto" holds one fp32 gradient [L, H] per point
        difference = end - start

        def evaluate_points(point_docs, point_alphas):
            """F, s and dF/dz at (document, alpha) pairs: each is a one-point path from z(alpha); with
            several processes each evaluates its share of the pairs."""
            share = self.steps_share
            mine = torch.arange(len(point_docs)) if share is None else share.steps(len(point_docs))
            docs_mine = point_docs[mine]
            point_start = start[docs_mine] + point_alphas[mine].to(self.device)[:, None, None] * difference[docs_mine]
            one_point = torch.zeros(1), torch.ones(1)
            path = run_path(point_start, point_start + difference[docs_mine], *one_point, docs_mine, share=None)
            self.scheduler.held_bytes += len(point_docs) * point_bytes     # kept until the group is summed
            if share is not None:
                for name in ("gradient_sum", "integrand", "outputs"):
                    every_pair = torch.zeros(len(point_docs), *getattr(path, name).shape[1:], device=self.device)
                    every_pair[mine] = getattr(path, name)
                    setattr(path, name, share.sum(every_pair))
            return path

        if auto is None:
            path = run_path(start, end, alphas, weights)
        else:
            tolerance, max_steps = auto
            if self.scheduler.budget is not None:   # the held gradients may take half the room the budget leaves
                room = (self.scheduler.budget - self.scheduler.meter.in_use()) // 2
                max_steps = max(INITIAL_POINTS, min(max_steps, room // (point_bytes * len(docs))))
                if self.steps_share is not None:    # every process must make the same choices
                    max_steps = self.steps_share.agree(max_steps)
            try:
                path = integrate_adaptive(evaluate_points, start, end, f_x - f_b, tolerance, max_steps)
            finally:
                self.scheduler.held_bytes = 0
        t2 = time.perf_counter()
        # [G, L', H] and [G, L']; L' > L when the model pads (no attribution there: same ids in x and b)
        attributions, token_sums = kernels.finalize(path.difference, path.gradient_sum)
        deltas = token_sums.sum(-1) - (f_x - f_b)
        # One copy to the host per tensor and group, not per document.
        attributions, token_sums, deltas, predictions, targets_used, probs, f_x, f_b = (
            t.cpu() for t in (attributions, token_sums, deltas, predictions, target_index,
                              torch.softmax(logits_x.float(), -1), f_x, f_b))
        integrand = path.integrand if auto is not None else path.integrand.cpu()
        results = []
        for row, length in enumerate(batch.lengths):
            results.append({
                "attributions": attributions[row, :length], "token_scores": normalized(token_sums[row, :length]),
                "delta": deltas[row], "prediction": predictions[row], "target": targets_used[row],
                "probs": probs[row], "output_at_input": f_x[row], "output_at_baseline": f_b[row],
                "integrand": integrand[row],
                "evaluations": len(alphas) if auto is None else path.evaluations[row],
                **({} if auto is None else {"alphas": path.alphas[row], "tolerance_met": path.met[row],
                                            "max_steps": max_steps})})
        seconds = {"endpoints": t1 - t0, **path.seconds, "finalize": time.perf_counter() - t2}
        seconds["total"] = time.perf_counter() - t0
        return results, {"documents": len(docs), "sequences_per_call": path.sequences_per_call,
                         "seconds": seconds, "fallbacks": path.fallbacks}
