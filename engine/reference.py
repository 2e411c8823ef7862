"""The Captum path with fastig's settings, and the metrics that compare the two."""

import time
from dataclasses import dataclass

import torch

from .big_bird import block_sparse_kept
from .errors import BaselineError
from .models import (attributing, check_target, forward_overrides, named_classes, output_values, resolve_output,
                     several_targets)
from .summarize import token_scores

# The correctness contract of DESIGN.md: fp32, and bf16/fp16 (token ranking).
MAX_REL_L2 = 1e-4
MAX_DELTA_DIFF = 1e-5
MIN_LOW_PRECISION_PEARSON = 0.999


@dataclass
class CaptumResult:
    """attributions: list of [L_i, H] fp32; delta: [B]; seconds: wall time of Captum's calls."""
    attributions: list
    delta: torch.Tensor
    seconds: float


@torch.inference_mode(False)    # gradients in any caller's context (an evaluation loop's inference mode)
def captum_attribute(engine, texts_or_ids, target=None, n_steps: int = 50, method: str = "gausslegendre",
                     baseline="pad", output: str | None = None, internal_batch_size: int | None = None,
                     max_length: int | None = None, progress: bool | None = False) -> CaptumResult:
    """Captum's LayerIntegratedGradients on the engine's model, layer and inputs, one document at a time;
    with several targets ("all", a list of classes per document) one run per (document, target), in the
    order of Engine.attribute's records (progress: a bar of the runs; None: once they have run 10 s, as
    Engine.attribute's)."""
    from captum.attr import LayerIntegratedGradients

    docs = engine.documents(texts_or_ids, baseline, max_length)
    target, n_classes = named_classes(target, engine.model.config), engine.model.config.num_labels
    several = several_targets(target, len(docs), n_classes)
    runs = list(zip(docs, check_target(target, len(docs), n_classes))) if several is None else \
        [(doc, t) for doc, classes in zip(docs, several) for t in classes]
    output = resolve_output(output, engine.model.config)
    attributions, deltas, seconds = [], [], 0.0
    if progress or progress is None:
        from tqdm.auto import tqdm

        from .engine import PROGRESS_DELAY_S
        runs = tqdm(runs, unit="doc", desc="Captum", leave=False, delay=0.0 if progress else PROGRESS_DELAY_S)
    for doc, tgt in runs:
        if doc.baseline_ids is None:
            raise BaselineError("Captum's LayerIntegratedGradients takes baselines as ids: use baseline='pad', "
                                "'unk', 'mask' or a LongTensor of ids to compare with it")
        names = list(doc.model_kwargs)

        def forward(input_ids, *extra):
            logits = engine.model(input_ids=input_ids, **dict(zip(names, extra)),
                                  **forward_overrides(engine.model.config)).logits
            return output_values(logits, output)

        ids = doc.input_ids.to(engine.device).unsqueeze(0)
        extra = tuple(doc.model_kwargs[n].to(engine.device).unsqueeze(0) for n in names)
        with attributing(engine.model), block_sparse_kept(engine.model):     # the model as given (fastig.big_bird)
            if tgt is None:
                with torch.no_grad():
                    tgt = int(forward(ids, *extra).argmax())
            start = time.perf_counter()
            attr, delta = LayerIntegratedGradients(forward, engine.layer).attribute(
                ids, baselines=doc.baseline_ids.to(engine.device).unsqueeze(0), target=tgt,
                additional_forward_args=extra, n_steps=n_steps, method=method,
                internal_batch_size=internal_batch_size, return_convergence_delta=True)
            seconds += time.perf_counter() - start
        attributions.append(attr[0, : len(doc.input_ids)].detach().float().cpu())
        deltas.append(delta.detach().float().cpu().reshape(()))
    return CaptumResult(attributions, torch.stack(deltas), seconds)


@dataclass
class Comparison:
    """Agreement of fastig with Captum, worst document first where it is a maximum."""
    max_abs: float
    rel_l2: float
    pearson: float
    spearman: float
    top_k_overlap: float
    delta_fastig: list
    delta_captum: list
    sum_fastig: list        # each document's attributions summed: the integral
    sum_captum: list

    @property
    def delta_diff(self) -> float:
        return max(abs(a - b) for a, b in zip(self.delta_fastig, self.delta_captum))

    @property
    def sum_diff(self) -> float:
        return max(abs(a - b) for a, b in zip(self.sum_fastig, self.sum_captum))

    @property
    def other_baseline_output(self) -> bool:
        """The deltas differ but the integrals agree: Captum's F(b), a forward of the baseline ids, is not the
        path's start, where the model reads the ids past the layer (a decoder classifier's last-token pooling)."""
        return self.delta_diff > MAX_DELTA_DIFF and self.sum_diff <= MAX_DELTA_DIFF

    def passed(self, precision: str = "fp32") -> bool:
        """The correctness contract of fastig run in `precision` against Captum in fp32: rel L2
        <= 1e-4 and the integrals (the attributions' sums) equal to 1e-5 for fp32, which is the deltas'
        agreement where both take F(b) at the path's start (not so: other_baseline_output); Pearson of
        token scores >= 0.999 for bf16/fp16."""
        if precision == "fp32":
            return self.rel_l2 <= MAX_REL_L2 and self.sum_diff <= MAX_DELTA_DIFF
        return self.pearson >= MIN_LOW_PRECISION_PEARSON


def _pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double() - a.double().mean(), b.double() - b.double().mean()
    denominator = a.norm() * b.norm()
    return float((a @ b) / denominator) if denominator > 0 else float(torch.equal(a, b))


def _ranks(x: torch.Tensor) -> torch.Tensor:
    return torch.argsort(torch.argsort(x, stable=True)).double()


def compare(result, captum_result: CaptumResult, k: int = 10) -> Comparison:
    """Compare an `Attribution` with a `CaptumResult` of the same documents and settings."""
    max_abs = rel = 0.0
    pearson, spearman, overlap = [], [], []
    for ours, theirs in zip(result.attributions, captum_result.attributions):
        max_abs = max(max_abs, float((ours - theirs).abs().max()))
        rel = max(rel, float((ours - theirs).norm() / theirs.norm().clamp_min(1e-30)))
        s_ours, s_theirs = token_scores(ours), token_scores(theirs)
        pearson.append(_pearson(s_ours, s_theirs))
        spearman.append(_pearson(_ranks(s_ours), _ranks(s_theirs)))
        kk = min(k, len(s_ours))
        top = lambda s: set(torch.topk(s.abs(), kk).indices.tolist())  # noqa: E731
        overlap.append(len(top(s_ours) & top(s_theirs)) / kk)
    sums = lambda attributions: [float(a.double().sum()) for a in attributions]  # noqa: E731
    return Comparison(max_abs, rel, min(pearson), min(spearman), min(overlap),
                      result.delta.tolist(), captum_result.delta.tolist(),
                      sums(result.attributions), sums(captum_result.attributions))
