"""The questions the suite answers, each with sizes for three modes.

full: the sizes a GPU answers (and a patient CPU). quick: the same questions sized to fit a
2-core CPU in minutes. tiny: seconds, for the smoke test; its numbers mean nothing.
"""

import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from fastig.precision import DTYPES, PRECISIONS, native_on_this_cpu
from fastig.quadrature import METHODS
from fastig.reference import CaptumResult, compare

from .common import (CAPTUM_DEFAULT_STEPS, CAPTUM_SEED_BATCH, Job, ModelSpec, StepJob, auto_to_tolerance,
                     command_for, gauss_legendre_hindsight, in_child, log, measure, model_shape_peak, model_step,
                     save_model, seconds_per_step, step_profile, steps_to_tolerance, targets_timing, timed_command)
from .tools import tools_timing

TOLERANCES = (1e-2, 1e-3, 1e-4)
HINDSIGHT_MAX_STEPS = 128   # the scan over every n costs n^2 / 2 evaluations per document


@dataclass(frozen=True)
class Sizes:
    model: ModelSpec
    configs: tuple          # (length, documents, n_steps) per measurement; equal_accuracy searches n_steps;
                            # model_step: (length, sequences per call, 1)
    captum_batches: tuple   # internal_batch_size candidates of the sweep
    max_steps: int = 0      # equal accuracy: the largest n_steps tried
    more_models: tuple = () # equal accuracy: further models measured the same way


LONGFORMER_BASE = ModelSpec("longformer", layers=12, window=512)
LONGFORMER_SMALL = ModelSpec("longformer", layers=2, hidden=256, heads=4, window=64)
TINY_LONGFORMER = ModelSpec("longformer", layers=2, hidden=32, heads=2, window=8, max_tokens=128)
TINY_BERT = ModelSpec("bert", layers=2, hidden=32, heads=2, max_tokens=128, initializer_range=0.3)
# Confident like a fine-tuned classifier: s(alpha) peaks over a short stretch of the path (benchmarks/trained.py).
# (A deeper or wider one did not learn the task in 300 steps at this learning rate.)
TRAINED_BERT = ModelSpec("bert", layers=2, hidden=64, heads=4, max_tokens=512, vocab_size=1000, trained_steps=300)
# On the 2-core EPYC, Captum's time per step stopped improving past about 2048 tokens per
# call (512 tokens: ibs 4 0.83-0.96 s/step, 8 1.17-1.25; 1024 tokens: ibs 2 2.4-2.7, 4 2.4-4.1),
# so the quick sweeps stop there and their cost stays small.
CPU_BATCHES, GPU_BATCHES = (1, 2, 4, 8), (2, 4, 8, 16, 32, 64)

SIZES = {
    "quick": {
        "full": Sizes(replace(LONGFORMER_BASE, layers=4, window=256), ((512, 1, 16), (512, 1, 64)), GPU_BATCHES),
        "quick": Sizes(replace(LONGFORMER_BASE, layers=4, window=256), ((512, 1, 16),), (1, 2, 4)),
        "tiny": Sizes(TINY_LONGFORMER, ((32, 1, 4), (32, 1, 8)), (1, 2, 4)),
    },
    "long_document": {
        "full": Sizes(LONGFORMER_BASE, ((4096, 1, 250),), GPU_BATCHES),
        "quick": Sizes(replace(LONGFORMER_BASE, layers=4), ((1024, 1, 6),), (1, 2)),
        "tiny": Sizes(TINY_LONGFORMER, ((64, 1, 4),), (1, 2, 4)),
    },
    "short_documents": {
        "full": Sizes(ModelSpec("bert", layers=12, max_tokens=512), ((128, 64, 50),), GPU_BATCHES),
        "quick": Sizes(ModelSpec("bert", layers=4, max_tokens=512), ((128, 6, 8),), CPU_BATCHES),
        "tiny": Sizes(TINY_BERT, ((16, 3, 4),), (1, 2, 4)),
    },
    "steps_sweep": {
        "full": Sizes(LONGFORMER_BASE, tuple((1024, 1, n) for n in (16, 64, 256, 1024)), GPU_BATCHES),
        "quick": Sizes(LONGFORMER_SMALL, tuple((128, 1, n) for n in (16, 64, 256)), CPU_BATCHES),
        "tiny": Sizes(TINY_LONGFORMER, tuple((16, 1, n) for n in (2, 4, 8)), (1, 2)),
    },
    "length_sweep": {
        "full": Sizes(LONGFORMER_BASE, tuple((n, 1, 32) for n in (512, 1024, 2048, 4096)), GPU_BATCHES),
        "quick": Sizes(LONGFORMER_SMALL, tuple((n, 1, 4) for n in (512, 1024, 2048, 4096)), (1, 2, 4)),
        "tiny": Sizes(TINY_LONGFORMER, tuple((n, 1, 2) for n in (16, 32, 64)), (1, 2)),
    },
    "model_step": {
        "full": Sizes(LONGFORMER_BASE, ((512, 32, 1), (1024, 16, 1), (4096, 4, 1)), ()),
        "quick": Sizes(replace(LONGFORMER_BASE, layers=2), ((512, 8, 1), (1024, 4, 1), (4096, 1, 1)), ()),
        "tiny": Sizes(TINY_LONGFORMER, ((16, 4, 1), (64, 1, 1)), ()),
    },
    "processes": {      # (length, documents, n_steps): one document runs `attribute`, several run `dataset`
        "full": Sizes(LONGFORMER_BASE, ((4096, 1, 256), (512, 64, 32)), ()),
        "quick": Sizes(LONGFORMER_SMALL, ((4096, 1, 64), (256, 32, 16)), ()),
        "tiny": Sizes(TINY_LONGFORMER, ((64, 1, 8), (32, 4, 4)), ()),
    },
    # (length, documents, n_steps of the converged reference); a model per config (Sizes.more_models: the rest)
    "default_path": {
        "full": Sizes(replace(LONGFORMER_BASE, layers=4), ((512, 1, 256), (2048, 1, 256), (4096, 1, 256)),
                      GPU_BATCHES, more_models=(replace(LONGFORMER_BASE, layers=4), LONGFORMER_BASE)),
        "quick": Sizes(replace(LONGFORMER_BASE, layers=4), ((512, 1, 256), (2048, 1, 256), (1024, 1, 256)),
                       (1, 2, 4), more_models=(replace(LONGFORMER_BASE, layers=4), LONGFORMER_SMALL)),
        "tiny": Sizes(TINY_LONGFORMER, ((32, 1, 32), (64, 1, 32)), (1, 2), more_models=(TINY_LONGFORMER,)),
    },
    # (length, documents, n_steps); the model's labels are the targets explained
    "several_targets": {
        "full": Sizes(ModelSpec("bert", layers=12, max_tokens=512, labels=4), ((256, 8, 50),), GPU_BATCHES),
        "quick": Sizes(ModelSpec("bert", layers=4, max_tokens=512, labels=4), ((256, 1, 16),), CPU_BATCHES),
        "tiny": Sizes(replace(TINY_BERT, labels=4), ((16, 2, 4),), (1, 2)),
    },
    # The tools' own models (benchmarks/tools.py): a BERT classifier and a GPT-2 of this shape
    "tools": {
        "full": dict(layers=12, hidden=768, text_words=250, prompt_words=30, new_tokens=25, n_steps=50),
        "quick": dict(layers=4, hidden=256, text_words=120, prompt_words=30, new_tokens=8, n_steps=50),
        "tiny": dict(layers=2, hidden=32, text_words=10, prompt_words=5, new_tokens=3, n_steps=4),
    },
    "equal_accuracy": {
        "full": Sizes(TRAINED_BERT, ((64, 32, 0),), GPU_BATCHES, max_steps=4096,
                      more_models=(ModelSpec("bert", layers=12, max_tokens=512, initializer_range=0.2),)),
        "quick": Sizes(TRAINED_BERT, ((64, 8, 0),), CPU_BATCHES, max_steps=512,
                       more_models=(ModelSpec("bert", layers=2, hidden=128, heads=4, max_tokens=512,
                                              initializer_range=0.2),)),
        "tiny": Sizes(replace(TINY_BERT, vocab_size=300, trained_steps=20), ((16, 2, 0),), (1, 2), max_steps=16,
                      more_models=(TINY_BERT,)),
    },
}

# The longest model_step shape again, eager and compiled (fastig.compiled): a scenario of its own, so that a
# time-boxed GPU session (benchmarks/gpu_session.sh) loses only this part if compilation runs long.
SIZES["compiled_step"] = {mode: replace(sizes, configs=sizes.configs[-1:]) for mode, sizes in SIZES["model_step"].items()}
STEP_COMPILE_MODES = {"cuda": ("default", "reduce-overhead"), "cpu": ("default",)}
# The same step under torch.profiler: where its time goes, the operators (CUDA kernels on a GPU) that take most.
SIZES["step_profile"] = SIZES["compiled_step"]
STEP_PROFILE_TOP = 15

TITLES = {
    "quick": "fastig vs Captum on a Longformer-base-shaped model",
    "long_document": "one long document",
    "short_documents": "many short documents",
    "steps_sweep": "time and memory against n_steps",
    "length_sweep": "time and memory against length",
    "model_step": "one model step (forward + input-gradient backward) by attention, and BERT of the same shape",
    "processes": "one process against N (accelerate launch), for one long document and for a data set",
    "compiled_step": "the model step with banded attention, eager and with its layers through torch.compile "
                     "(Engine(compile=...)); the first call is the compilation",
    "step_profile": "where the banded model step's time goes: the operators (CUDA kernels on a GPU) with the most "
                    "time of their own, by torch.profiler",
    "equal_accuracy": "steps and time to reach a relative convergence delta",
    "default_path": "fastig's default call against Captum's default use (gausslegendre, 50 steps, its best "
                    "internal_batch_size), both scored against a converged fp32 reference",
    "tools": "the tools people run, with Captum and on fastig: transformers-interpret's sequence explainer, "
             "Inseq's layer_integrated_gradients over a GPT-2 generation (Inseq 0.7.1's forward gives the model "
             "the ids of its additional arguments, so its attributions are zero with Captum: there the column is "
             "the L2 distance), and Captum's LLMGradientAttribution (Captum's class, fastig's drop-in, "
             "fastig.llm's one sweep)",
    "several_targets": "every class of a document: fastig in one sweep (target=\"all\") against one call per "
                       "class, fastig's and Captum's (as tools call it)",
}


def new_section(name: str, model: str, **fields) -> dict:
    """A scenario's section of the report, its rows to come."""
    return {"name": name, "title": TITLES[name], "model": model, **fields, "rows": []}


class Stopped(Exception):
    """A scenario stopped early (Ctrl-C, a SIGTERM, a failed measurement; the cause is __cause__) with the
    rows it measured before in `section`."""

    def __init__(self, section: dict):
        super().__init__(f"{section['name']} stopped early")
        self.section = section


@contextmanager
def rows_kept(section: dict):
    """Inside, a scenario adds rows to section["rows"] as it measures them; when it stops early, the section
    goes up as Stopped with the rows measured so far, for the suite to write (an hour of a run is not lost
    to a Ctrl-C or a time limit)."""
    try:
        yield
    except BaseException as cause:
        raise Stopped(section) from cause


# Where the suite also times fastig.captum's drop-in class, run by the Captum provider's own code
# under fastig.patch_captum(), with the largest internal_batch_size Captum ran at.
DROP_IN_SCENARIOS = ("quick", "short_documents")


def fastig_precisions(name: str, mode: str, device: str) -> list[str]:
    """Every precision the engine offers by name ("auto" resolves to one of them). A quick run
    on CPU leaves out fp16 (40x slower than fp32 on the EPYC, which has no fp16 matmul units)
    and times bf16 in its headline scenario only, to stay within its minutes, and only where the CPU
    multiplies bf16 itself (emulated on an AVX2-only EPYC: 20x slower than fp32)."""
    names = [p for p in PRECISIONS if p != "auto"]
    if name == "model_step":    # the precisions issue 6's targets name
        names = ["fp32", "bf16"]
    elif mode == "quick" and device == "cpu":
        names = ["fp32", "bf16"] if name == "quick" else ["fp32"]
    if mode == "quick" and device == "cpu":
        names = [p for p in names if native_on_this_cpu(p)]
    return names


def fastig_jobs(name: str, mode: str, base: Job) -> list[Job]:
    """fastig at each precision; on Longformer also fp32 with Hugging Face's attention, to show what
    the banded attention changes (left out of the quick steps sweep on CPU, to keep that suite short)."""
    jobs = [replace(base, precision=p) for p in fastig_precisions(name, mode, base.device)]
    if base.model.family == "longformer" and not (mode == "quick" and base.device == "cpu" and name == "steps_sweep"):
        jobs.append(replace(base, attention="model"))
    return jobs


def best_captum_batch(job: Job, candidates: tuple) -> tuple[int, dict]:
    """The internal_batch_size with the least time per step for this job's length, by a small sweep."""
    batches = [b for b in candidates if b <= max(job.n_steps, 1)] or [min(candidates)]
    per_step = in_child(seconds_per_step, replace(job, provider="captum"), batches)
    return min(per_step, key=per_step.get), per_step


def _scaled_batch(best: int, best_length: int, length: int, n_steps: int) -> int:
    """The sweep's winner, carried to other lengths as the same number of tokens per call."""
    return max(1, min(n_steps, best * best_length // length))


def _row(job: Job, result: dict, peaks: dict) -> dict:
    token_steps_per_s = job.token_steps / result["seconds"]
    achieved = token_steps_per_s * job.model.flops_per_token_step(job.length)
    peak = peaks.get(job.precision)
    return {"provider": job.label, "precision": job.precision if job.provider == "fastig" else "fp32",
            "length": job.length, "documents": job.documents, "n_steps": job.n_steps,
            "method": job.method, "batch": job.batch, "seconds": result["seconds"], "times": result["times"],
            "token_steps_per_s": token_steps_per_s, "documents_per_s": job.documents / result["seconds"],
            "peak_memory_mb": result["peak_memory_mb"], "relative_delta": result["relative_delta"],
            "max_abs_delta": float(result["delta"].abs().max()), "achieved_gflops": achieved / 1e9,
            "fraction_of_peak": achieved / peak if peak else None}


def compare_providers(name: str, mode: str, repeats: int, device: str, peaks: dict) -> dict:
    """fastig (each precision) against Captum (the seed's batch and the sweep's best) per configuration."""
    sizes = SIZES[name][mode]
    first_length, documents, first_steps = sizes.configs[0]
    section = new_section(name, sizes.model.describe(), flops_per_token_step={
        length: sizes.model.flops_per_token_step(length) for length, _, _ in sizes.configs})
    with rows_kept(section):
        probe = Job("captum", sizes.model, first_length, first_steps, documents, repeats=repeats, device=device)
        best, per_step = best_captum_batch(probe, sizes.captum_batches)
        log(f"{name}: Captum seconds per step by internal_batch_size {per_step}; best {best}")
        section.update(captum_seconds_per_step=per_step, captum_best_batch=best)
        for length, documents, n_steps in sizes.configs:
            base = Job("fastig", sizes.model, length, n_steps, documents, repeats=repeats, device=device,
                       retain_cpu_memory=device == "cpu")
            scaled = _scaled_batch(best, first_length, length, n_steps)
            captum_jobs = [replace(base, provider="captum", batch=b, retain_cpu_memory=False)
                           for b in sorted({CAPTUM_SEED_BATCH, scaled})]
            if device == "cpu":     # Captum with fastig's allocator setting too, at its best batch
                captum_jobs.append(replace(base, provider="captum", batch=scaled))
            fastig_runs = fastig_jobs(name, mode, base)
            if name in DROP_IN_SCENARIOS:
                fastig_runs.append(replace(captum_jobs[-1], provider="dropin"))
            results = {}
            try:
                for job in captum_jobs + fastig_runs:
                    results[job] = in_child(measure, job)
                    log(f"{name}: {job.label:<18} {length:>5} tokens x {documents} docs, {n_steps:>4} steps: "
                        f"{results[job]['seconds']:8.2f} s, peak {results[job]['peak_memory_mb']:7.0f} MB")
            finally:    # also when stopped early: the rows of the runs measured
                section["rows"] += _provider_rows(captum_jobs + fastig_runs, results, peaks)
    return section


def _provider_rows(jobs: list[Job], results: dict, peaks: dict) -> list[dict]:
    """A row for each job measured; fastig's compared with Captum's run at the seed's batch and timed against
    every Captum run, where those were measured."""
    captum = [results[job] for job in jobs if job.provider == "captum" and job in results]
    seed = next((results[job] for job in jobs if job in results and job.provider == "captum"
                 and job.batch == CAPTUM_SEED_BATCH and not job.retain_cpu_memory), None)
    rows = []
    for job in (job for job in jobs if job in results):
        row = _row(job, results[job], peaks)
        if job.provider != "captum" and seed is not None:
            agreement = compare(CaptumResult(results[job]["attributions"], results[job]["delta"], 0.0),
                                CaptumResult(seed["attributions"], seed["delta"], 0.0))
            row.update(rel_l2_vs_captum=agreement.rel_l2, pearson_vs_captum=agreement.pearson,
                       speedup_vs_captum_seed=seed["seconds"] / row["seconds"],
                       speedup_vs_captum_best=min(r["seconds"] for r in captum) / row["seconds"])
        rows.append(row)
    return rows


def equal_accuracy(mode: str, repeats: int, device: str) -> dict:
    """For each model, provider and rule: the n_steps, model evaluations (all documents) and time to reach
    |delta| <= tol * |F(x) - F(b)| for every document; and n_steps="auto", which picks its points per document."""
    sizes = SIZES["equal_accuracy"][mode]
    length, documents, _ = sizes.configs[0]
    rows, ladders, summaries = [], {}, []
    for model in (sizes.model, *sizes.more_models):
        base = Job("fastig", model, length, sizes.max_steps, documents, repeats=repeats, device=device,
                   retain_cpu_memory=device == "cpu")
        best, _ = best_captum_batch(replace(base, n_steps=max(sizes.captum_batches)), sizes.captum_batches)
        jobs = [replace(base, precision=p) for p in fastig_precisions("equal_accuracy", mode, device)]
        jobs.append(replace(base, provider="captum", batch=best))
        model_rows = []
        for job in jobs:
            for method in METHODS:
                found = _uniform_to_tolerance(replace(job, method=method), sizes.max_steps)
                ladders[f"{model.describe()}: {job.label} {method}"] = found["ladder"]
                model_rows += found["rows"]
        model_rows += _auto_rows(jobs[0])
        _speedups(model_rows)
        hindsight = in_child(gauss_legendre_hindsight, jobs[0], list(TOLERANCES), HINDSIGHT_MAX_STEPS)
        summaries.append({"model": model.describe(), "captum_best_batch": best, "documents": documents,
                          "length": length, **hindsight})
        rows += [{**row, "model": model.describe(), "length": length, "documents": documents} for row in model_rows]
    return {"name": "equal_accuracy", "title": TITLES["equal_accuracy"],
            "model": "; ".join(s["model"] for s in summaries), "max_steps": sizes.max_steps,
            "ladders": ladders, "rows": rows, "models": summaries}


def default_path(mode: str, repeats: int, device: str) -> dict:
    """fastig's default call (no n_steps, method or precision) against Captum's default use, scored against
    a converged fp32 reference (Gauss-Legendre with the config's n_steps, by fastig's Captum-exact step loop).

    Captum runs at the best internal_batch_size of a sweep, with the allocator's defaults and, on CPU,
    also with fastig's allocator setting; "vs best Captum" is against the faster of the two."""
    sizes = SIZES["default_path"][mode]
    models = (sizes.model, *sizes.more_models)
    section = new_section("default_path", "; ".join(dict.fromkeys(m.describe() for m in models)))
    rows = section["rows"]
    with rows_kept(section):
        for model, (length, documents, reference_steps) in zip(models, sizes.configs):
            base = Job("fastig-default", model, length, CAPTUM_DEFAULT_STEPS, documents, repeats=repeats, device=device)
            best, _ = best_captum_batch(replace(base, provider="captum"), sizes.captum_batches)
            reference = in_child(measure, replace(base, provider="fastig", precision="fp32", n_steps=reference_steps,
                                                  repeats=1, retain_cpu_memory=device == "cpu"))
            captum_jobs = [replace(base, provider="captum", batch=best)]
            if device == "cpu":
                captum_jobs.append(replace(captum_jobs[0], retain_cpu_memory=True))
            results = {job: in_child(measure, job) for job in captum_jobs + [base]}
            captum_best = min(results[job]["seconds"] for job in captum_jobs)
            for job, result in results.items():
                scores = compare(CaptumResult(result["attributions"], result["delta"], 0.0),
                                 CaptumResult(reference["attributions"], reference["delta"], 0.0))
                evaluations = ([d["evaluations"] for d in result["documents"]] if "documents" in result
                               else [CAPTUM_DEFAULT_STEPS] * documents)
                rows.append({"provider": job.label, "model": model.describe(), "length": length, "documents": documents,
                             "evaluations": evaluations, "seconds": result["seconds"], "times": result["times"],
                             "peak_memory_mb": result["peak_memory_mb"], "relative_delta": result["relative_delta"],
                             "rel_l2_vs_reference": scores.rel_l2, "pearson_vs_reference": scores.pearson,
                             "reference_steps": reference_steps,
                             "speedup_vs_captum_best": captum_best / result["seconds"],
                             **({"documents_detail": result["documents"]} if "documents" in result else {})})
                log(f"default_path: {job.label:<28} {length:>5} tokens: {result['seconds']:8.2f} s, "
                    f"{sum(evaluations)} evaluations, rel L2 {scores.rel_l2:.1e}, Pearson {scores.pearson:.6f}")
    return section


def several_targets(mode: str, repeats: int, device: str) -> dict:
    """fastig's one sweep for every class against one call per class (fastig's, and Captum's at its best
    internal_batch_size), all with fastig's allocator setting on CPU, timed in alternation in one process."""
    sizes = SIZES["several_targets"][mode]
    (length, documents, n_steps), = sizes.configs
    job = Job("fastig", sizes.model, length, n_steps, documents, repeats=repeats, device=device,
              retain_cpu_memory=device == "cpu")
    best, _ = best_captum_batch(replace(job, provider="captum"), sizes.captum_batches)
    found = in_child(targets_timing, job, best)
    per_class = found["seconds"]["fastig fp32, one call per class"]
    rows = [{"provider": name, "targets": sizes.model.labels, "length": length, "documents": documents,
             "n_steps": n_steps, "seconds": seconds, "times": found["times"][name],
             "time_vs_fastig_per_class": seconds / per_class} for name, seconds in found["seconds"].items()]
    for row in rows:
        log(f"several_targets: {row['provider']:<34} {row['seconds']:8.2f} s ({row['time_vs_fastig_per_class']:.2f}x)")
    return {"name": "several_targets", "title": TITLES["several_targets"], "model": sizes.model.describe()
            + f", {sizes.model.labels} labels", "rows": rows,
            "rel_l2_sweep_vs_per_class": found["rel_l2_sweep_vs_per_class"]}


def tools(mode: str, repeats: int, device: str) -> dict:
    """Each tool's call with Captum and on fastig, timed in alternation in one process (CPU or GPU alike:
    the tools run where their models are, on the CPU here)."""
    sizes = SIZES["tools"][mode]
    found = in_child(tools_timing, sizes, repeats)
    for row in found["rows"]:
        agreement = "" if row["rel_l2_vs_captum"] is None else f", rel L2 {row['rel_l2_vs_captum']:.1e}"
        log(f"tools: {row['provider']:<46} {row['seconds']:8.2f} s ({row['speedup_vs_captum']:.2f}x){agreement}")
    return {"name": "tools", "title": TITLES["tools"], "rows": found["rows"],
            "model": (f"Bert and GPT-2, {sizes['layers']} layers, hidden {sizes['hidden']}, random; a "
                      f"{found['text_tokens']}-token text; a {found['prompt_tokens']}-token prompt and "
                      f"{found['generated_tokens']} target tokens; {sizes['n_steps']} steps"
                      + "".join(f"; left out: {tool}" for tool in found["left_out"]))}


def _uniform_to_tolerance(job: Job, max_steps: int) -> dict:
    """The job's rule at n_steps 1 (or 2), 2, 4, ... up to max_steps: the relative delta at each, and a
    row per tolerance with the first n_steps meeting it for every document."""
    smallest = 1 if job.method == "gausslegendre" else 2
    ladder = [2 ** i for i in range(max_steps.bit_length()) if smallest <= 2 ** i <= max_steps]
    found = in_child(steps_to_tolerance, job, ladder, list(TOLERANCES))
    rows = []
    for tolerance in TOLERANCES:
        n_steps, seconds, times = found["needed"].get(tolerance, (None, None, None))
        rows.append({"provider": job.label, "method": job.method, "tolerance": tolerance, "n_steps": n_steps,
                     "evaluations": n_steps and n_steps * job.documents, "seconds": seconds, "times": times})
    log(f"equal_accuracy: {job.label:<18} {job.method:<18} " + ", ".join(
        f"{t:g}: {found['needed'][t][0]} steps" if t in found["needed"] else f"{t:g}: > {max_steps}"
        for t in TOLERANCES))
    return {"ladder": found["ladder"], "rows": rows}


def _auto_rows(job: Job) -> list[dict]:
    """n_steps="auto" at each tolerance: the most evaluations of one document, over all, and the time."""
    auto = in_child(auto_to_tolerance, job, list(TOLERANCES))
    log("equal_accuracy: fastig auto " + ", ".join(f"{t:g}: {f['evaluations']} evaluations" for t, f in auto.items()))
    return [{"provider": f"{job.label} auto", "method": "auto", "tolerance": tolerance,
             "n_steps": found["n_steps"] if found["met"] else None,
             "evaluations": found["evaluations"] if found["met"] else None,
             "seconds": found["seconds"] if found["met"] else None, "times": found["times"],
             "relative_delta": found["relative_delta"]} for tolerance, found in auto.items()]


def _speedups(rows: list[dict]) -> None:
    """fastig's speed-up over Captum with the same rule, and over Captum's fastest rule, at each tolerance."""
    for tolerance in TOLERANCES:
        reached = [r for r in rows if r["tolerance"] == tolerance and r["seconds"] is not None]
        captum = {r["method"]: r["seconds"] for r in reached if r["provider"].startswith("captum")}
        for row in reached:
            if row["provider"].startswith("fastig") and captum:
                row["speedup_vs_captum_same_rule"] = (captum[row["method"]] / row["seconds"]
                                                      if row["method"] in captum else None)
                row["speedup_vs_captum_fastest_rule"] = min(captum.values()) / row["seconds"]


def step_attentions(device: str) -> list[str]:
    """Hugging Face's Longformer attention and each banded kernel that runs on the device."""
    return ["model", "blocks"] + (["flex"] if device == "cuda" else [])


def model_steps(mode: str, repeats: int, device: str, peaks: dict) -> dict:
    """One step (what every (document, step) pair of IG costs) of the Longformer with each attention,
    and of BERT with the same layers where it takes the length (its positions end at 512)."""
    sizes = SIZES["model_step"][mode]
    longformer = sizes.model
    bert = ModelSpec("bert", longformer.layers, longformer.hidden, longformer.heads, max_tokens=512,
                     initializer_range=longformer.initializer_range)
    section = new_section("model_step", longformer.describe())
    rows = section["rows"]
    with rows_kept(section):
        for length, sequences, _ in sizes.configs:
            for precision in fastig_precisions("model_step", mode, device):
                shape_peak = model_shape_peak(device, DTYPES[precision], longformer.hidden, length * sequences)
                base = StepJob(longformer, length, sequences, precision, repeats=repeats, device=device)
                jobs = [replace(base, attention=a) for a in step_attentions(device)]
                if length <= bert.max_tokens:
                    jobs.append(replace(base, model=bert))
                results = {}
                try:
                    for job in jobs:
                        results[job] = in_child(model_step, job)
                        log(f"model_step: {job.label:<34} {length:>5} tokens x {sequences:>2}: "
                            f"{results[job]['seconds']:7.3f} s (first call {results[job]['first_call_seconds']:.1f} s)"
                            f", peak {results[job]['peak_memory_mb']:7.0f} MB")
                finally:    # also when stopped early: the rows of the steps measured
                    rows += _step_rows(results, peaks, shape_peak)
    return section


def _step_rows(results: dict, peaks: dict, shape_peak: float) -> list[dict]:
    """A row for each step measured (results: StepJob -> model_step's), timed against the step with Hugging
    Face's attention and BERT's step of the same shape where those were measured."""
    seconds = {"bert" if job.model.family == "bert" else job.attention: result["seconds"]
               for job, result in results.items()}
    rows = []
    for job, result in results.items():
        tokens = job.length * job.sequences
        achieved = tokens * job.model.flops_per_token_step(job.length) / result["seconds"]
        rows.append({"provider": job.label, "precision": job.precision, "attention": job.attention,
                     "family": job.model.family, "length": job.length, "sequences": job.sequences, **result,
                     "token_steps_per_s": tokens / result["seconds"], "achieved_gflops": achieved / 1e9,
                     "fraction_of_peak": achieved / peaks[job.precision] if job.precision in peaks else None,
                     "model_shape_peak_gflops": shape_peak / 1e9, "fraction_of_model_shape_peak": achieved / shape_peak,
                     "speedup_vs_hf_attention": seconds["model"] / result["seconds"] if "model" in seconds else None,
                     "time_vs_bert": result["seconds"] / seconds["bert"] if "bert" in seconds else None})
    return rows


def compiled_steps(mode: str, repeats: int, device: str, peaks: dict) -> dict:
    """The step of model_step's longest shape with banded blocks attention, eager and compiled in each
    mode of STEP_COMPILE_MODES (a tiny run: fp32 only, one compilation)."""
    sizes = SIZES["compiled_step"][mode]
    section = new_section("compiled_step", sizes.model.describe())
    rows = section["rows"]
    with rows_kept(section):
        for eager in _banded_steps(sizes, mode, repeats, device):
            length, sequences, precision = eager.length, eager.sequences, eager.precision
            results = {}
            for job in [eager] + [replace(eager, compile=m) for m in STEP_COMPILE_MODES[device]]:
                results[job] = in_child(model_step, job)
                log(f"compiled_step: {job.label:<46} {length:>5} tokens x {sequences:>2}: "
                    f"{results[job]['seconds']:7.3f} s (first call {results[job]['first_call_seconds']:.1f} s)")
            for job, result in results.items():
                achieved = length * sequences * sizes.model.flops_per_token_step(length) / result["seconds"]
                rows.append({"provider": job.label, "precision": precision, "compile": job.compile,
                             "length": length, "sequences": sequences, **result, "achieved_gflops": achieved / 1e9,
                             "fraction_of_peak": achieved / peaks[precision] if precision in peaks else None,
                             "speedup_vs_eager": results[eager]["seconds"] / result["seconds"]})
    return section


def step_profiles(mode: str, repeats: int, device: str) -> dict:
    """The profile of model_step's longest shape with banded blocks attention, in each precision (a tiny run:
    fp32 only): its STEP_PROFILE_TOP operators by their own time, a row each."""
    sizes = SIZES["step_profile"][mode]
    section = new_section("step_profile", sizes.model.describe())
    rows = section["rows"]
    with rows_kept(section):
        for job in _banded_steps(sizes, mode, repeats, device):
            profile = in_child(step_profile, job, STEP_PROFILE_TOP)
            top = profile["operators"][0]
            log(f"step_profile: {job.label:<34} {job.length:>5} tokens x {job.sequences:>2}: "
                f"{profile['seconds']:7.3f} s profiled, first operator {top['name']} {top['share']:.0%}")
            for rank, operator in enumerate(profile["operators"], 1):
                rows.append({"provider": job.label, "precision": job.precision, "length": job.length,
                             "sequences": job.sequences, "profiled_seconds": profile["seconds"],
                             "operator_ms_per_step": profile["operator_ms_per_step"], "rank": rank, **operator})
    return section


def _banded_steps(sizes: Sizes, mode: str, repeats: int, device: str):
    """The banded blocks step at each of the sizes' shapes, in each precision of model_step (a tiny run: fp32)."""
    for length, sequences, _ in sizes.configs:
        for precision in ["fp32"] if mode == "tiny" else fastig_precisions("model_step", mode, device):
            yield StepJob(sizes.model, length, sequences, precision, "blocks", repeats=repeats, device=device)


def process_scaling(mode: str, device: str) -> dict:
    """Wall time of the same command in 1 and N processes (N: the cores of a CPU up to 2, the GPUs),
    with the speed-up and the scaling efficiency (speed-up / N). Timed once each: the commands are long."""
    import os

    processes = torch.cuda.device_count() if device == "cuda" else min(2, os.cpu_count() or 1)
    sizes = SIZES["processes"][mode]
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        model_dir = save_model(sizes.model, Path(folder) / "model")
        for length, documents, n_steps in sizes.configs:
            command = command_for(Path(folder), model_dir, length, documents, n_steps, device)
            times = {n: timed_command(command, n) for n in sorted({1, processes})}
            for n, seconds in times.items():
                speedup = times[1] / seconds
                rows.append({"task": "one document" if documents == 1 else "data set", "length": length,
                             "documents": documents, "n_steps": n_steps, "processes": n, "seconds": seconds,
                             "token_steps_per_s": length * documents * n_steps / seconds, "speedup": speedup,
                             "efficiency": speedup / n})
                log(f"processes: {rows[-1]['task']:<12} {length:>5} tokens x {documents:>2}, {n_steps} steps, "
                    f"{n} process(es): {seconds:7.2f} s, efficiency {speedup / n:.2f}")
    return {"name": "processes", "title": TITLES["processes"], "model": sizes.model.describe(), "rows": rows,
            "processes": processes}


# Scenarios of their own kind, each with its runner (mode, repeats, device, peaks); every other scenario compares
# fastig with Captum per configuration (compare_providers).
OWN_RUNNERS = {
    "equal_accuracy": lambda mode, repeats, device, peaks: equal_accuracy(mode, repeats, device),
    "default_path": lambda mode, repeats, device, peaks: default_path(mode, repeats, device),
    "model_step": model_steps,
    "compiled_step": compiled_steps,
    "step_profile": lambda mode, repeats, device, peaks: step_profiles(mode, repeats, device),
    "processes": lambda mode, repeats, device, peaks: process_scaling(mode, device),
    "several_targets": lambda mode, repeats, device, peaks: several_targets(mode, repeats, device),
    "tools": lambda mode, repeats, device, peaks: tools(mode, repeats, device),
}


def run(name: str, mode: str, repeats: int, device: str, peaks: dict) -> dict:
    """One scenario's section of the report; `peaks` holds the measured matmul FLOP/s by precision."""
    if name in OWN_RUNNERS:
        return OWN_RUNNERS[name](mode, repeats, device, peaks)
    return compare_providers(name, mode, repeats, device, peaks)
