"""`fastig.llm`: which prompt tokens each generated token comes from, in one sweep for all of them.

Captum's LLMGradientAttribution over LayerIntegratedGradients runs one integration per generated
token j: the prompt plus the j tokens generated before it, the path interpolating the prompt's
token embeddings from a baseline token's (the generated tokens are the same at both ends), F the
log-probability of token j. A causal model's logits at position p depend on positions <= p only,
so all of these are one path over the prompt plus every generated token but the last: F_j is read
at position P - 1 + j of the same forward. `attribute_generation` runs that forward once per step
and one backward pass per generated token (fastig.integrate, targets=T), which gives Captum's
numbers (tests/test_llm.py) at a fraction of its model calls.
"""

import inspect
import time
from dataclasses import dataclass

import torch
from torch import nn

from . import kernels, quadrature
from .engine import progress_bar
from .errors import InputError, TargetError
from .integrate import integrate_path
from .models import attributing, forward_overrides, output_replaced, unwrapped
from .result import RunStats
from .scheduler import DEFAULT_MEMORY_BUDGET, Scheduler, chunk_size_override, cpu_memory_retained

DEFAULT_GENERATION = {"max_new_tokens": 25, "do_sample": False}     # Captum's defaults, greedy


@dataclass
class GenerationAttribution:
    """Attributions of each generated token to the prompt's tokens.

    token_attr: [T, P] fp32, row j: generated token j's log-probability attributed to each prompt
    token (Captum's LLMAttributionResult.token_attr); seq_attr: [P], their sum over j.
    prompt_tokens, output_tokens: each token decoded on its own; output_text: the response decoded
    whole (a character split over tokens reads right there only). prompt_ids [P'], output_ids [T]: the ids
    (P' >= P where skip_tokens took tokens out of the attribution). log_probs: [T] F_j at the input;
    delta: [T] convergence delta of each token's integral (sum of its attributions - (F_j(x) - F_j(b))).
    """
    token_attr: torch.Tensor
    seq_attr: torch.Tensor
    prompt_tokens: list
    output_tokens: list
    output_text: str
    prompt_ids: torch.Tensor
    output_ids: torch.Tensor
    log_probs: torch.Tensor
    delta: torch.Tensor
    n_steps: int
    method: str
    stats: RunStats


def _ids(tokenizer, text_or_ids, name: str, add_special_tokens: bool) -> torch.Tensor:
    if isinstance(text_or_ids, str):
        if tokenizer is None:
            raise InputError(f"{name} is text but no tokenizer was given: pass tokenizer= or ids")
        return torch.tensor(tokenizer.encode(text_or_ids, add_special_tokens=add_special_tokens), dtype=torch.long)
    if isinstance(text_or_ids, torch.Tensor) and not text_or_ids.is_floating_point():
        if text_or_ids.ndim == 2 and len(text_or_ids) == 1:
            text_or_ids = text_or_ids[0]
        if text_or_ids.ndim == 1:
            return text_or_ids.long().cpu()
    raise InputError(f"{name} must be a str or a LongTensor of ids [n] (or [1, n]); got {type(text_or_ids).__name__}")


@torch.inference_mode(False)    # gradients in any caller's context (an evaluation loop's inference mode)
def attribute_generation(model: nn.Module, tokenizer, prompt, target=None, *, n_steps: int = 50,
                         method: str = "gausslegendre", generation: dict | None = None, baseline_token_id: int = 0,
                         skip_tokens=None, memory_budget=None, chunk_size: int | None = None,
                         progress: bool | None = None) -> GenerationAttribution:
    """Integrated Gradients of each generated token's log-probability over the prompt's token embeddings.

    prompt: text (encoded as Captum's TextTokenInput encodes it) or ids. target: the response (text,
    encoded without special tokens as Captum does, or ids); None: generate it greedily with
    `generation` (default Captum's: 25 new tokens). baseline_token_id: the token every prompt token
    is at the path's start (Captum's default 0). skip_tokens: token ids or strings kept as they are
    at both ends and left out of token_attr (Captum's skip_tokens). n_steps, method: the rule
    (Captum's defaults). memory_budget, chunk_size, progress: as for fastig.Engine and its attribute.
    """
    model = unwrapped(model)
    chunk_size_override(chunk_size)
    alphas, weights = quadrature.rule(method, n_steps)
    device = next(model.parameters()).device
    prompt_ids = _ids(tokenizer, prompt, "prompt", add_special_tokens=True)
    if len(prompt_ids) == 0:
        raise InputError("prompt holds no token")
    if target is None:
        with torch.no_grad(), attributing(model):
            generated = model.generate(prompt_ids[None].to(device), attention_mask=torch.ones(1, len(prompt_ids),
                                       dtype=torch.long, device=device), **(generation or DEFAULT_GENERATION))
        output_ids = generated[0, len(prompt_ids):].cpu()
    else:
        if generation is not None:
            raise TargetError("generation= is for target=None (generating the response); a target is given")
        output_ids = _ids(tokenizer, target, "target", add_special_tokens=False)
    if len(output_ids) == 0:
        raise TargetError("the target response holds no token")
    vocabulary = model.get_input_embeddings().num_embeddings
    if int(torch.cat([prompt_ids, output_ids]).max()) >= vocabulary or baseline_token_id >= vocabulary:
        raise InputError(f"ids must be below the model's vocabulary of {vocabulary}")

    started = time.perf_counter()
    kept = _attributed(prompt_ids, tokenizer, skip_tokens)
    sequence = torch.cat([prompt_ids, output_ids[:-1]])[None].to(device)        # [1, P + T - 1]
    baseline = sequence.clone()
    baseline[0, :len(prompt_ids)][kept.to(device)] = baseline_token_id
    layer = model.get_input_embeddings()
    with torch.no_grad():
        end, start = layer(sequence).float(), layer(baseline).float()
    prompt_length, count = len(prompt_ids), len(output_ids)
    positions = torch.arange(prompt_length - 1, prompt_length - 1 + count, device=device)
    targets = output_ids.to(device)
    keep = {"logits_to_keep": count} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
    layer_dtype = next(model.parameters()).dtype

    def log_probs(z: torch.Tensor) -> torch.Tensor:
        """F [c, T]: each generated token's log-probability at the position that predicts it."""
        with output_replaced(layer, z.to(layer_dtype)):
            logits = model(input_ids=sequence.expand(len(z), -1), **keep, **forward_overrides(model.config)).logits
        logits = logits[:, -count:] if keep else logits[:, positions]
        return torch.log_softmax(logits.float(), -1).gather(-1, targets.expand(len(z), -1)[..., None])[..., 0]

    scheduler = Scheduler(device, DEFAULT_MEMORY_BUDGET if memory_budget is None else memory_budget)
    scheduler.start_run()
    bar = progress_bar(progress, [sequence.shape[1]])
    try:
        with attributing(model):      # no dropout, no caller's autocast; the model's mode as it was after
            with torch.no_grad():
                f_x, f_b = log_probs(end)[0], log_probs(start)[0]
            t0 = time.perf_counter()
            path = integrate_path(lambda z, rows: log_probs(z), start, end, alphas, weights, scheduler, chunk_size,
                                  on_chunk=bar.evaluated if bar is not None else None, targets=count)
    finally:
        if bar is not None:
            bar.close()
    t1 = time.perf_counter()
    _, token_sums = kernels.finalize(path.difference, path.gradient_sum)       # [T, P + T - 1]
    token_attr = token_sums[:, :prompt_length][:, kept.to(device)].cpu()
    seconds = path.seconds
    seconds.endpoints, seconds.finalize = t0 - started, time.perf_counter() - t1
    seconds.total = time.perf_counter() - started
    stats = RunStats(device=str(device), precision="fp32", attention="model",
                     retains_cpu_memory=device.type == "cpu" and cpu_memory_retained(), fallbacks=path.fallbacks,
                     documents_per_group=[1], chunk_size=[max(path.sequences_per_call)],
                     model_calls=len(path.sequences_per_call), memory=scheduler.run_stats(), seconds=seconds,
                     token_steps_per_s=sequence.shape[1] * n_steps / max(seconds.total, 1e-12))
    # Each token as text ("Ġmodel" reads " model"; a byte of a longer character reads "\ufffd").
    tokens = (lambda ids: [tokenizer.decode([i]) for i in ids.tolist()]) if tokenizer is not None else \
        (lambda ids: [str(i) for i in ids.tolist()])
    return GenerationAttribution(
        token_attr=token_attr, seq_attr=token_attr.sum(0), prompt_tokens=tokens(prompt_ids[kept]),
        output_tokens=tokens(output_ids),
        output_text=tokenizer.decode(output_ids.tolist()) if tokenizer is not None else " ".join(tokens(output_ids)),
        prompt_ids=prompt_ids, output_ids=output_ids, log_probs=f_x.cpu(),
        delta=(token_sums.sum(-1) - (f_x - f_b)).cpu(), n_steps=n_steps, method=method, stats=stats)


def _attributed(prompt_ids: torch.Tensor, tokenizer, skip_tokens) -> torch.Tensor:
    """[P] bool: the prompt positions attributed (those whose token is not in skip_tokens)."""
    if not skip_tokens:
        return torch.ones(len(prompt_ids), dtype=torch.bool)
    if isinstance(skip_tokens[0], str):
        if tokenizer is None:
            raise InputError("skip_tokens as strings need a tokenizer")
        ids = tokenizer.convert_tokens_to_ids(list(skip_tokens))
        # a tokenizer with an unk token (GPT-2's) maps every unknown string to it
        unknown = [token for token, i in zip(skip_tokens, ids)
                   if i is None or (i == tokenizer.unk_token_id and token != tokenizer.unk_token)]
        if unknown:
            raise InputError(f"skip_tokens {unknown} are not tokens of the tokenizer")
        skip_tokens = ids
    return ~torch.isin(prompt_ids, torch.tensor(list(skip_tokens), dtype=torch.long))
