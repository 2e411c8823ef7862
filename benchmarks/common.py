"""Shared pieces of the benchmarks: models of known shapes, providers, timing, memory, machine facts.

Every measurement runs in a fresh child process (forked from a server that has only imported
the libraries), so its peak memory is its own and no provider inherits another's allocator
state or warm caches.
"""

import hashlib
import multiprocessing
import os
import pickle
import platform
import resource
import signal
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from fastig.options import CAPTUM_DEFAULT_STEPS

CAPTUM_SEED_BATCH = 2   # the seed notebook's internal_batch_size
MODELS_FOLDER = "FASTIG_BENCH_MODELS"   # environment: where the processes of a suite run share their models


@contextmanager
def models_shared():
    """Inside, ModelSpec.build saves the models it builds to a temporary folder and later builds load them;
    the folder goes at the end. Set before the first measurement's process starts: the processes forked
    for measurements see the environment of the first one's start."""
    previous = os.environ.get(MODELS_FOLDER)
    with tempfile.TemporaryDirectory(prefix="fastig-bench-models-") as folder:
        os.environ[MODELS_FOLDER] = folder
        try:
            yield folder
        finally:
            if previous is None:
                os.environ.pop(MODELS_FOLDER)
            else:
                os.environ[MODELS_FOLDER] = previous


@dataclass(frozen=True)
class ModelSpec:
    """A sequence classifier (2 labels unless told) of a known shape: randomly initialised, or with trained_steps
    trained on a synthetic keyword task (benchmarks/trained.py) and fed documents of that task."""
    family: str                     # "longformer" | "bert"
    layers: int
    hidden: int = 768
    heads: int = 12
    window: int = 0                 # Longformer's attention window (tokens, both sides together)
    max_tokens: int = 4096
    initializer_range: float = 0.05
    seed: int = 0
    trained_steps: int = 0
    vocab_size: int | None = None   # None: the family's; a trained model takes a small one, quicker to teach
    labels: int = 2

    def build(self) -> torch.nn.Module:
        """The model in eval mode, the same weights in every process: seeded, and within a suite run built once
        (models_shared): the first process saves it, the next ones load it (Longformer-base: 4.7 s to build,
        0.1 s to load on the 2-core EPYC, and a GPU session starts about 45 processes)."""
        from fastig.models import hub_quiet

        folder = os.environ.get(MODELS_FOLDER)       # gone once its run ended (a forkserver keeps the variable)
        shared = folder is not None and Path(folder).is_dir()
        saved = Path(folder) / hashlib.sha256(repr(self).encode()).hexdigest()[:16] if shared else None
        if saved is not None and saved.is_dir():
            with hub_quiet():
                return self._classifier().from_pretrained(saved).eval()
        model = self._built()
        if saved is not None:       # whole or absent: written aside, then renamed
            partial = saved.with_name(f"{saved.name}.{os.getpid()}.partial")
            with hub_quiet():
                model.save_pretrained(partial)
            partial.rename(saved)
        return model

    def _classifier(self) -> type:
        from transformers import BertForSequenceClassification, LongformerForSequenceClassification

        return LongformerForSequenceClassification if self.family == "longformer" else BertForSequenceClassification

    def _built(self) -> torch.nn.Module:
        from transformers import BertConfig, LongformerConfig

        shape = dict(num_hidden_layers=self.layers, hidden_size=self.hidden, num_attention_heads=self.heads,
                     intermediate_size=4 * self.hidden, num_labels=self.labels, initializer_range=self.initializer_range,
                     **({"vocab_size": self.vocab_size} if self.vocab_size else {}))
        torch.manual_seed(self.seed)
        if self.family == "longformer":
            config = LongformerConfig(attention_window=self.window, max_position_embeddings=self.max_tokens + 2, **shape)
            return self._classifier()(config).eval()
        config = BertConfig(max_position_embeddings=self.max_tokens, **shape)
        model = self._classifier()(config).eval()
        if self.trained_steps:
            from .trained import trained
            model = trained(model, self.trained_steps, repr(self), self.seed)
        return model

    def documents(self, model: torch.nn.Module, documents: int, length: int) -> torch.Tensor:
        """[documents, length] ids to attribute: the task's documents for a trained model, random ids otherwise."""
        if not self.trained_steps:
            return random_ids(model, documents, length)
        from .trained import keyword_documents
        return keyword_documents(model.config.vocab_size, documents, length, torch.Generator().manual_seed(1))[0]

    def describe(self) -> str:
        window = f", window {self.window}" if self.family == "longformer" else ""
        state = f", trained {self.trained_steps} steps on a keyword task" if self.trained_steps else ""
        return f"{self.family.capitalize()} {self.layers} layers, hidden {self.hidden}, {self.heads} heads{window}{state}"

    def flops_per_token_step(self, length: int) -> float:
        """Useful FLOPs of one token in one step: forward plus the input-gradient backward.

        Per layer: the dense matmuls (QKV, output, FFN: 2 * (4 H^2 + 2 H I) forward, the same
        again backward for the activation gradient; weight gradients are never computed) and
        the attention products over the span a token sees (QK^T and AV: 4 * span * H forward,
        twice that backward). Longformer's span is its window plus the token, BERT's the length.
        """
        span = min(length, self.window + 1) if self.family == "longformer" else length
        dense = 2 * (4 * self.hidden ** 2 + 2 * self.hidden * 4 * self.hidden)
        return self.layers * (2 * dense + 12 * span * self.hidden)


def random_ids(model: torch.nn.Module, documents: int, length: int, seed: int = 0) -> torch.Tensor:
    """[documents, length] ids: a CLS-like first token, random ordinary tokens, a SEP-like last one."""
    config = model.config
    first = config.bos_token_id if config.bos_token_id is not None else 101
    last = config.eos_token_id if config.eos_token_id is not None else 102
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, config.vocab_size, (documents, length), generator=generator)
    ids[:, 0], ids[:, -1] = first, last
    return ids


def median_seconds(fn, repeats: int, sync=None) -> tuple[float, list[float], object]:
    """Median wall time of `fn()` over `repeats` runs (the caller has warmed it up), the
    times, and what the last run returned."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        value = fn()
        if sync is not None:
            sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times, value


def alternated_seconds(runs: dict, repeats: int, sync=None) -> tuple[dict, dict, dict]:
    """Each named run's median wall time over `repeats` rounds that run them in turn (a noisy machine
    slows neighbours alike), after one warm-up round: (medians, times, what each returned last)."""
    results = {name: run() for name, run in runs.items()}
    times = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            results[name] = run()
            if sync is not None:
                sync()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}, times, results


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def machine(device: str) -> dict:
    """Device name, cores and library versions, recorded next to every result."""
    import captum
    import transformers

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {"device": torch.cuda.get_device_name() if device == "cuda" else cpu, "device_type": device,
            "cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "captum": captum.__version__, "triton": triton_version}


def matmul_peak(device: str, dtype: torch.dtype, size: int) -> float:
    """Measured FLOP/s of a square matmul of `size`: the ceiling the models are held against."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    if device == "cuda":
        from triton.testing import do_bench
        milliseconds = do_bench(lambda: a @ b)
        return 2 * size ** 3 / (milliseconds / 1e3)
    # The best of several runs: a ceiling, not a typical value (a median read 127 GFLOP/s
    # where the best read 197 on a shared 2-core EPYC, below what the models reached). Ten of them, or
    # as many as take about 2 s: an emulated bf16 (an AVX2-only EPYC, 0.8 GFLOP/s) took 22 s a run at 2048.
    _, first, _ = median_seconds(lambda: a @ b, repeats=1)
    _, times, _ = median_seconds(lambda: a @ b, repeats=max(2, min(10, int(2.0 / first[0]))))
    return 2 * size ** 3 / min(times)


@dataclass(frozen=True)
class Job:
    """One timed measurement: a provider on a model, documents of one length, one rule."""
    provider: str                   # "fastig" | "fastig-default" (the default call) | "captum" | "dropin" (Captum's
                                    # code under fastig.patch_captum())
    model: ModelSpec
    length: int
    n_steps: int
    documents: int = 1
    method: str = "gausslegendre"
    batch: int | None = None        # Captum's internal_batch_size; fastig: steps per call (None: its default)
    precision: str = "fp32"         # fastig only
    attention: str = "banded"       # fastig only: Longformer self-attention, "banded" (fastig's) or "model" (HF's)
    repeats: int = 3
    device: str = "cpu"
    # On CPU, glibc keeps freed memory for reuse (fastig.retain_freed_cpu_memory), as the `fastig` command
    # sets it: fastig runs with it, and Captum runs with and without it, so that no ratio credits fastig
    # for a setting any Captum user can make.
    retain_cpu_memory: bool = False

    @property
    def label(self) -> str:
        if self.provider == "fastig-default":
            return "fastig default"
        if self.provider == "fastig":
            return (f"fastig {self.precision}" + (" hf-attention" if self.attention == "model" else "")
                    + (f" chunk={self.batch}" if self.batch else ""))
        retained = " retained-memory" if self.retain_cpu_memory else ""
        return f"{'fastig.captum' if self.provider == 'dropin' else 'captum'} ibs={self.batch}{retained}"

    @property
    def token_steps(self) -> int:
        return self.documents * self.length * self.n_steps


def _provider(job: Job, engine, ids):
    """A function running the job's attribution once; it returns (attributions, deltas)."""
    settings = dict(target=0, method=job.method)
    if job.provider == "fastig-default":
        def run(n_steps=None):      # n_steps, method, precision left to fastig: its accuracy-targeted call
            result = engine.attribute(ids, target=0, progress=False)
            run.documents = result.documents
            return list(result.attributions), result.delta
    elif job.provider == "fastig":
        def run(n_steps=job.n_steps):
            result = engine.attribute(ids, n_steps=n_steps, chunk_size=job.batch, progress=False, **settings)
            return list(result.attributions), result.delta
    else:
        from contextlib import nullcontext

        from fastig import patch_captum
        from fastig.reference import captum_attribute

        def run(n_steps=job.n_steps):
            # The drop-in: the same code calling captum.attr.LayerIntegratedGradients, patched as a tool would be.
            with patch_captum() if job.provider == "dropin" else nullcontext():
                result = captum_attribute(engine, ids, n_steps=n_steps, internal_batch_size=job.batch, **settings)
            return result.attributions, result.delta
    return run


def _warm_up(job: Job, engine, run, n_steps: int) -> None:
    """One model call of the job's own size warms allocator, thread pool and kernels.

    fastig's own first call at a length is its memory probe; the call after it has the size
    the memory budget then gives."""
    from fastig.models import model_length
    from fastig.scheduler import PROBE_SEQUENCES

    steps = job.batch
    length = model_length(engine.model.config, job.length)
    while job.provider == "fastig" and steps is None:   # the probe; a second one if it keeps all activations
        run(min(n_steps, max(PROBE_SEQUENCES, 2)))     # 2: the fewest steps every rule takes
        steps = engine.scheduler.sequences_per_call(length)
    run(max(2, min(n_steps, steps)))                    # Captum's trapezoid rule refuses 1 step
    for _ in range(3):      # fastig's call-size search: timed runs take the size it settles on
        if job.provider != "fastig" or job.batch or engine.scheduler.search.settled:
            break
        run(n_steps)


def _peak_memory_mb(device: str) -> float:
    """The process's peak: CUDA memory allocated since the last reset, or the CPU's resident high-water mark."""
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024      # KiB on Linux


def _sync(job: Job):
    return torch.cuda.synchronize if job.device == "cuda" else None


def _engine_and_ids(job: Job):
    """The job's engine (its model built afresh in this process) and its documents' ids."""
    import fastig
    if job.retain_cpu_memory and job.device == "cpu":
        fastig.retain_freed_cpu_memory()
    precision = {"fastig": job.precision, "fastig-default": "auto"}.get(job.provider, "fp32")
    engine = fastig.Engine(job.model.build(), precision=precision, device=job.device, attention=job.attention)
    return engine, job.model.documents(engine.model, job.documents, job.length)


def measure(job: Job) -> dict:
    """Runs in a child process: median time, peak memory, attributions and deltas of one job; for the
    default call also each document's evaluations, precision and estimated errors."""
    engine, ids = _engine_and_ids(job)
    run = _provider(job, engine, ids)
    if job.provider == "fastig-default":
        run()                       # its first call probes memory and starts the call-size search
    else:
        _warm_up(job, engine, run, job.n_steps)
    if job.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    seconds, times, (attributions, delta) = median_seconds(run, job.repeats, _sync(job))
    found = {"seconds": seconds, "times": times, "peak_memory_mb": _peak_memory_mb(job.device),
             "attributions": attributions, "delta": delta, "relative_delta": _relative_delta(attributions, delta)}
    if job.provider == "fastig-default":
        found["documents"] = [{key: getattr(d, key) for key in ("evaluations", "precision", "estimated_error",
                                                                 "precision_error", "tolerance_met")}
                              for d in run.documents]
    return found


def targets_timing(job: Job, captum_batch: int) -> dict:
    """Runs in a child process: every class of the job's documents explained by fastig in one sweep
    (target="all"), by fastig one call per class, and by Captum one call per class (as tools call it),
    timed in alternation (median of job.repeats rounds after a warm-up); and the sweep's largest
    relative L2 difference to the one-call-per-class attributions."""
    import fastig
    from fastig.reference import captum_attribute

    sweep_engine, ids = _engine_and_ids(job)
    # Each way its own scheduler: a sweep's call costs more than a one-target call of the same size, and
    # the call-size search is per length.
    each_engine = fastig.Engine(sweep_engine.model, precision="fp32", device=job.device)
    classes = range(job.model.labels)
    rule = dict(n_steps=job.n_steps, method=job.method)
    runs = {
        "fastig fp32, one sweep": lambda: sweep_engine.attribute(ids, target="all", progress=False, **rule),
        "fastig fp32, one call per class": lambda: [each_engine.attribute(ids, target=t, progress=False, **rule)
                                                    for t in classes],
        f"captum ibs={captum_batch}, one call per class": lambda: [
            captum_attribute(sweep_engine, ids, target=t, internal_batch_size=captum_batch, **rule) for t in classes],
    }
    for run in runs.values():       # a second warm-up: the probes, then the call-size search
        run()
    seconds, times, results = alternated_seconds(runs, job.repeats, _sync(job))
    sweep = results["fastig fp32, one sweep"]
    per_class = results["fastig fp32, one call per class"]
    pairs = len(classes)
    rel_l2 = max(float((sweep.attributions[d * pairs + t] - per_class[t].attributions[d]).norm()
                       / per_class[t].attributions[d].norm()) for t in classes for d in range(job.documents))
    return {"times": times, "seconds": seconds, "rel_l2_sweep_vs_per_class": rel_l2}


def _relative_delta(attributions: list, delta: torch.Tensor) -> float:
    """max over documents of |delta| / |F(x) - F(b)|, where F(x) - F(b) = sum(attributions) - delta."""
    gap = torch.stack([a.double().sum() for a in attributions]) - delta.double()
    return float((delta.double().abs() / gap.abs().clamp_min(1e-30)).max())


def steps_to_tolerance(job: Job, ladder: list[int], tolerances: list[float]) -> dict:
    """Runs in a child process: the relative delta at each n_steps of `ladder` (until every
    tolerance is met), then the median time at the first n_steps meeting each tolerance."""
    engine, ids = _engine_and_ids(job)
    run = _provider(job, engine, ids)
    _warm_up(job, engine, run, ladder[0])
    reached = []
    for n_steps in ladder:
        reached.append((n_steps, _relative_delta(*run(n_steps))))
        if reached[-1][1] <= min(tolerances):
            break
    needed = {}
    for tolerance in tolerances:
        n_steps = next((n for n, rel in reached if rel <= tolerance), None)
        if n_steps is not None:
            seconds, times, _ = median_seconds(lambda: run(n_steps), job.repeats, _sync(job))
            needed[tolerance] = (n_steps, seconds, times)
    return {"ladder": reached, "needed": needed}


def auto_to_tolerance(job: Job, tolerances: list[float]) -> dict:
    """Runs in a child process: fastig's n_steps="auto" at each tolerance: the evaluations it used (the
    most for one document, and over all), whether it met the tolerance, and its median time."""
    engine, ids = _engine_and_ids(job)

    def run(tolerance):
        return engine.attribute(ids, n_steps="auto", tolerance=tolerance, target=0, progress=False)

    run(max(tolerances))                    # warm-up
    found = {}
    for tolerance in tolerances:
        seconds, times, result = median_seconds(lambda: run(tolerance), job.repeats, _sync(job))
        evaluations = [d.evaluations for d in result.documents]
        found[tolerance] = {"n_steps": max(evaluations), "evaluations": sum(evaluations),
                            "met": all(d.tolerance_met for d in result.documents), "seconds": seconds, "times": times,
                            "relative_delta": _relative_delta(list(result.attributions), result.delta)}
    return found




def gauss_legendre_hindsight(job: Job, tolerances: list[float], max_steps: int) -> dict:
    """Runs in a child process: each document's smallest Gauss-Legendre n meeting each tolerance, found by
    trying every n (a bound no user has: it takes the whole scan to know), and each document's relative
    delta with Captum's defaults. fastig's step loop computes them (it matches Captum to fp32 rounding)."""
    engine, ids = _engine_and_ids(job)

    def relative_deltas(n_steps):
        result = engine.attribute(ids, n_steps=n_steps, target=0, progress=False)
        gap = result.output_at_input.double() - result.output_at_baseline.double()
        return (result.delta.double().abs() / gap.abs().clamp_min(1e-30)).tolist()

    smallest = {t: [None] * len(ids) for t in tolerances}
    for n_steps in range(1, max_steps + 1):
        for doc, relative in enumerate(relative_deltas(n_steps)):
            for tolerance in tolerances:
                if smallest[tolerance][doc] is None and relative <= tolerance:
                    smallest[tolerance][doc] = n_steps
        if all(n is not None for found in smallest.values() for n in found):
            break
    return {"hindsight": [{"tolerance": t, "n_steps": found} for t, found in smallest.items()],
            "captum_default_steps": CAPTUM_DEFAULT_STEPS,
            "captum_default_relative_delta": relative_deltas(CAPTUM_DEFAULT_STEPS)}


def seconds_per_step(job: Job, batches: list[int]) -> dict[int, float]:
    """Runs in a child process: Captum's seconds per step at each internal_batch_size (one call each).

    The largest batch that fits runs first, untimed, so every timed call reuses memory already
    mapped. A batch that runs out of GPU memory is left out."""
    engine, ids = _engine_and_ids(job)
    out, warm = {}, False
    for batch in sorted(batches, reverse=True):
        run = _provider(replace(job, batch=batch), engine, ids)
        try:
            if not warm:
                run(batch)
                warm = True
            seconds, _, _ = median_seconds(lambda: run(batch), 1, _sync(job))
            out[batch] = seconds / batch
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()
    return out


def model_shape_peak(device: str, dtype: torch.dtype, hidden: int, tokens: int, repeats: int = 10) -> float:
    """The best FLOP/s of the model's own matmuls ([tokens, H] by [H, 3H], [H, 4H] and [4H, H]): the
    ceiling a step of the model is held against (square 2048 matmuls under-read bf16 on the EPYC:
    about 430 against 690-950 GFLOP/s at a Longformer-base layer's shapes)."""
    best = 0.0
    for inner, outer in ((hidden, 3 * hidden), (hidden, 4 * hidden), (4 * hidden, hidden)):
        a = torch.randn(tokens, inner, device=device).to(dtype)
        b = torch.randn(inner, outer, device=device).to(dtype)
        a @ b
        _, times, _ = median_seconds(lambda: a @ b, repeats, torch.cuda.synchronize if device == "cuda" else None)
        best = max(best, 2 * tokens * inner * outer / min(times))
    return best


@dataclass(frozen=True)
class StepJob:
    """One model step as fastig runs it: forward from the embeddings output plus the input-gradient
    backward, for `sequences` sequences of `length` tokens in one call."""
    model: ModelSpec
    length: int
    sequences: int
    precision: str = "fp32"
    attention: str = "model"        # "model" (the model's own), or a banded kernel of fastig.longformer
    repeats: int = 3
    device: str = "cpu"
    compile: str | None = None      # a torch.compile mode of the layers (fastig.compiled), None: eager

    @property
    def label(self) -> str:
        compiled = f" compiled {self.compile}" if self.compile else ""
        if self.model.family != "longformer":
            return f"{self.model.family} {self.precision}{compiled}"
        attention = "hf-attention" if self.attention == "model" else f"banded {self.attention}"
        return f"longformer {self.precision} {attention}{compiled}"


def _step_of(job: StepJob):
    """The job's step as a function of nothing (model, ids and z made here, in this process); returns the
    gradient."""
    from contextlib import nullcontext

    from fastig.compiled import layers_compiled
    from fastig.longformer import banded_attention
    from fastig.models import find_layer, output_captured, output_replaced
    from fastig.precision import resolve
    from fastig.scheduler import retain_freed_cpu_memory

    if job.device == "cpu":
        retain_freed_cpu_memory()

    model = job.model.build().to(job.device)
    ids = random_ids(model, job.sequences, job.length).to(job.device)
    kwargs = {}
    if job.model.family == "longformer":     # the CLS token global, as fastig runs Longformer
        kwargs["global_attention_mask"] = torch.zeros_like(ids)
        kwargs["global_attention_mask"][:, 0] = 1
    layer, captured = find_layer(model), []
    with torch.no_grad(), output_captured(layer, captured):
        model(input_ids=ids, **kwargs)
    z = captured[0].float().requires_grad_(True)
    precision = resolve(job.precision, torch.device(job.device))

    def step():
        with (output_replaced(layer, z), precision.autocast(),
              banded_attention(model, job.attention) if job.attention != "model" else nullcontext(),
              layers_compiled(model, job.compile) if job.compile else nullcontext()):
            logits = model(input_ids=ids, **kwargs).logits
        return torch.autograd.grad(logits[:, 0].float().sum(), z)[0]
    return step


def model_step(job: StepJob) -> dict:
    """Runs in a child process: median seconds of one step, its first call (compilation
    included), and the peak memory. On CPU with the allocator setting of the `fastig` command,
    for every attention alike."""
    step = _step_of(job)
    first, _, _ = median_seconds(step, 1, _sync(job))
    step()
    if job.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    seconds, times, _ = median_seconds(step, job.repeats, _sync(job))
    return {"seconds": seconds, "times": times, "first_call_seconds": first,
            "peak_memory_mb": _peak_memory_mb(job.device)}


def step_profile(job: StepJob, top: int) -> dict:
    """Runs in a child process: where one step's time goes, by torch.profiler over `job.repeats` steps after
    two warm-up steps: the `top` operators by their own time on the device (CUDA kernels on a GPU, the
    CPU's operators on a CPU), each with its calls and milliseconds per step and its share of the step's
    operator time; and the step's median wall seconds over the same steps."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    step = _step_of(job)
    step(), step()
    cuda = job.device == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as profiler:
        seconds, _, _ = median_seconds(step, job.repeats, _sync(job))
    def own(event):
        return event.self_device_time_total if cuda else event.self_cpu_time_total

    events = profiler.key_averages()
    if cuda:        # the kernels themselves (the operators that launched them carry the same device time)
        events = [e for e in events if e.device_type == DeviceType.CUDA and not e.is_user_annotation]
    events = sorted(events, key=own, reverse=True)
    total = sum(own(event) for event in events)
    return {"seconds": seconds, "operator_ms_per_step": total / 1e3 / job.repeats,
            "operators": [{"name": event.key, "calls_per_step": event.count / job.repeats,
                           "ms_per_step": own(event) / 1e3 / job.repeats, "share": own(event) / total}
                          for event in events[:top] if own(event) > 0]}


def save_model(spec: ModelSpec, folder) -> str:
    """The spec's model with a word-level tokenizer (token k is "w<k>") saved as a local model folder."""
    from transformers import BertTokenizerFast

    folder.mkdir(parents=True)
    model = spec.build()
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] +
                                [f"w{k}" for k in range(min(model.config.vocab_size, 30000) - 5)]) + "\n")
    model.save_pretrained(folder)
    BertTokenizerFast(vocab=str(vocab)).save_pretrained(folder)
    return str(folder)


def command_for(folder, model_dir: str, length: int, documents: int, n_steps: int, device: str) -> list[str]:
    """`fastig attribute` of one document, or `fastig dataset` of a CSV of `documents`, each `length` tokens."""
    import csv

    generator = torch.Generator().manual_seed(length + documents)
    texts = [" ".join(f"w{k}" for k in torch.randint(0, 20000, (length - 2,), generator=generator).tolist())
             for _ in range(documents)]
    common = ["--model", model_dir, "--n-steps", str(n_steps), "--device", device]
    if documents == 1:
        (folder / "document.txt").write_text(texts[0])
        return ["attribute", *common, "--file", str(folder / "document.txt")]
    with open(folder / "documents.csv", "w", newline="") as f:
        csv.writer(f).writerows([("text",), *((t,) for t in texts)])
    return ["dataset", *common, "--data", str(folder / "documents.csv"), "--shard-size", "4",
            "--out", str(folder / "run")]


def timed_command(command: list[str], processes: int) -> float:
    """Wall time of `fastig <command>` in `processes` processes, from start to exit (model loading included)."""
    import shutil
    import subprocess

    for argument in command:            # a data set run must not resume the previous one
        if argument.endswith("/run"):
            shutil.rmtree(argument, ignore_errors=True)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "fastig", *command, "--processes", str(processes)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"fastig {' '.join(command[:1])} in {processes} processes failed: {done.stderr[-2000:]}")
    return time.perf_counter() - started


# transformers imports model code lazily, 2-3 s per process; the server pays it once.
_PRELOAD = ["torch", "transformers", "transformers.models.bert.modeling_bert",
            "transformers.models.longformer.modeling_longformer", "captum.attr", "fastig", "fastig.reference",
            "fastig.benchmarks.common"]


class ChildTraceback(Exception):
    """The traceback of an exception raised in a child process, shown as that exception's cause."""


def _send_outcome(sending, fn, args) -> None:
    """In the child: fn(*args)'s value, or the exception it raised and its traceback, sent to the parent.

    By plain pickle, tensors by value: multiprocessing's pickler would send them as shared memory that
    the parent fetches from this process, which has ended by then."""
    from fastig.precision import PrecisionWarning

    # The suite times every precision on purpose; the matmul peak line shows one the CPU emulates (a
    # warning per row filled the log).
    warnings.filterwarnings("ignore", category=PrecisionWarning)
    try:
        outcome = (True, fn(*args), None)
    except BaseException as error:      # Ctrl-C included: the parent decides what it means
        outcome = (False, error, traceback.format_exc())
    try:
        message = pickle.dumps(outcome)
    except Exception:                   # an exception that does not pickle goes back as its text
        message = pickle.dumps((False, RuntimeError(repr(outcome[1])), outcome[2]))
    try:
        sending.send_bytes(message)
    except BrokenPipeError:     # the parent was stopped while it started this child: nobody to tell (its
        pass                    # traceback came after the parent's last line, "fastig bench: interrupted")


def in_child(fn, *args):
    """fn(*args) in a fresh process forked from a server that has only imported the libraries.

    The child does not outlive the wait for it: when the parent stops waiting (Ctrl-C, a SIGTERM, which
    the suite turns into Ctrl-C, or an error) the child is ended, so a stopped run writes what it measured
    at once instead of waiting for a measurement nobody will read."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(_PRELOAD)
    receiving, sending = context.Pipe(duplex=False)
    child = context.Process(target=_send_outcome, args=(sending, fn, args))
    try:
        child.start()
        sending.close()
        ok, value, child_traceback = pickle.loads(receiving.recv_bytes())
    except EOFError:
        child.join()
        if child.exitcode in (-signal.SIGINT, -signal.SIGTERM):
            raise KeyboardInterrupt(f"{fn.__name__}'s process was stopped (signal {-child.exitcode})") from None
        raise RuntimeError(f"{fn.__name__}'s process ended without a result (exit code {child.exitcode})") from None
    except BaseException:           # the parent stopped waiting (or starting it)
        if child.pid is not None:
            child.kill()
        raise
    finally:
        if child.pid is not None:
            child.join()
        receiving.close()
    if not ok:
        raise value from ChildTraceback(child_traceback)
    return value


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
