"""Run the scenarios, then write one JSON, one markdown table and one plot per run.

fastig bench [SCENARIO ...] [--quick | --full | --tiny] [--repeats 3] [--out benchmarks/results]
(the command gives it its one-line errors and takes a SIGTERM as Ctrl-C). Ratios are computed within the
run, never across runs.
"""

import argparse
import datetime
import json
import re
import time
from pathlib import Path

import torch

from fastig.errors import InputError
from fastig.precision import DTYPES

from . import scenarios
from .common import CAPTUM_SEED_BATCH, default_device, log, machine, matmul_peak, models_shared

MODES = ("tiny", "quick", "full")
README_START, README_END = "<!-- bench:start -->", "<!-- bench:end -->"


def matmul_peaks(device: str, mode: str, precisions: set[str]) -> dict:
    """Measured square-matmul FLOP/s of fp32 and of each precision timed, the ceilings of this run."""
    size = {"tiny": 256, "quick": 2048, "full": 8192 if device == "cuda" else 2048}[mode]
    return {"size": size, **{name: matmul_peak(device, dtype, size) for name, dtype in DTYPES.items()
                             if name in precisions | {"fp32", "bf16"}}}


class SuiteStopped(Exception):
    """A run stopped early (Ctrl-C, a SIGTERM, a failed measurement; the cause is __cause__): `report` holds
    the scenarios measured before, the last one with the rows it had (report["stopped"] says where and why)."""

    def __init__(self, report: dict):
        super().__init__(report["stopped"])
        self.report = report


def run_suite(names: list[str], mode: str, repeats: int, device: str) -> dict:
    started = time.perf_counter()
    precisions = {p for name in names for p in scenarios.fastig_precisions(name, mode, device)}
    peaks = matmul_peaks(device, mode, precisions)
    log(f"matmul peak on {device}: " + ", ".join(f"{n} {peaks[n] / 1e9:.0f} GFLOP/s" for n in DTYPES if n in peaks))
    report = {"date": datetime.date.today().isoformat(), "mode": mode, "repeats": repeats, "machine": machine(device),
              "matmul_peak_flops": peaks, "scenarios": []}
    with models_shared():
        for name in names:
            try:
                report["scenarios"].append(scenarios.run(name, mode, repeats, device, peaks))
            except BaseException as stop:
                cause = stop.__cause__ if isinstance(stop, scenarios.Stopped) else stop
                if isinstance(stop, scenarios.Stopped):
                    report["scenarios"].append(stop.section)
                why = "interrupted" if isinstance(cause, KeyboardInterrupt) else f"{type(cause).__name__}: {cause}"
                report.update(stopped=f"in {name}: {why}", seconds=time.perf_counter() - started)
                raise SuiteStopped(report) from cause
    report["seconds"] = time.perf_counter() - started
    return report


def _number(value, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}g}" if abs(value) < 1e4 else f"{value:.0f}"


def _ratio(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}x"


def _comparison_table(section: dict) -> list[str]:
    lines = ["| provider | tokens | docs | steps | time (s) | token-steps/s | docs/s | peak MB | max \\|δ\\|/\\|ΔF\\| "
             "| rel L2 to Captum | Pearson | GFLOP/s (of matmul peak) | vs Captum ibs=2 | vs best Captum |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in section["rows"]:
        speedup = lambda key: f"{r[key]:.2f}x" if key in r else ""  # noqa: E731
        share = f" ({r['fraction_of_peak']:.1%})" if r["fraction_of_peak"] is not None else ""
        lines.append(f"| {r['provider']} | {r['length']} | {r['documents']} | {r['n_steps']} | {r['seconds']:.2f} "
                     f"| {r['token_steps_per_s']:.0f} | {r['documents_per_s']:.3g} | {r['peak_memory_mb']:.0f} "
                     f"| {r['relative_delta']:.1e} | {_number(r.get('rel_l2_vs_captum'), 2)} "
                     f"| {_number(r.get('pearson_vs_captum'), 6)} | {r['achieved_gflops']:.1f}{share} "
                     f"| {speedup('speedup_vs_captum_seed')} | {speedup('speedup_vs_captum_best')} |")
    return lines


def _default_path_table(section: dict) -> list[str]:
    lines = ["| model | tokens | provider | evaluations | time (s) | rel L2 to reference | Pearson to reference "
             "| peak MB | vs best Captum |", "|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in section["rows"]:
        precisions = {d["precision"] for d in r.get("documents_detail", [])}
        provider = r["provider"] + (f" ({', '.join(sorted(precisions))})" if precisions else "")
        lines.append(f"| {r['model']} | {r['length']} | {provider} | {sum(r['evaluations'])} | {r['seconds']:.2f} "
                     f"| {r['rel_l2_vs_reference']:.1e} | {r['pearson_vs_reference']:.6f} | {r['peak_memory_mb']:.0f} "
                     f"| {r['speedup_vs_captum_best']:.2f}x |")
    lines += ["", "Reference: fastig fp32 Gauss-Legendre with "
              + ", ".join(sorted({str(r["reference_steps"]) for r in section["rows"]}))
              + " points (Captum-exact); Captum: gausslegendre, 50 steps, its best internal_batch_size."]
    return lines


def _targets_table(section: dict) -> list[str]:
    lines = ["| provider | targets | tokens | docs | steps | time (s) | time / fastig's one call per class |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in section["rows"]:
        lines.append(f"| {r['provider']} | {r['targets']} | {r['length']} | {r['documents']} | {r['n_steps']} "
                     f"| {r['seconds']:.2f} | {r['time_vs_fastig_per_class']:.2f}x |")
    return lines + ["", f"The sweep's attributions against one call per class: largest rel L2 "
                        f"{section['rel_l2_sweep_vs_per_class']:.1e}. Timed in alternation in one process, median "
                        "of the rounds after a warm-up; every way with fastig's allocator setting on CPU."]


def _tools_table(section: dict) -> list[str]:
    lines = ["| tool, attribution by | time (s) | rel L2 to Captum | vs Captum |", "|---|---:|---:|---:|"]
    for r in section["rows"]:
        lines.append(f"| {r['provider']} | {r['seconds']:.2f} | {_number(r['rel_l2_vs_captum'], 2)} "
                     f"| {r['speedup_vs_captum']:.2f}x |")
    return lines + ["", "Timed in alternation in one process (median of the rounds after a warm-up), every way with "
                        "fastig's allocator setting."]


def _accuracy_table(section: dict) -> list[str]:
    lines = []
    for summary in section["models"]:
        rows = [r for r in section["rows"] if r["model"] == summary["model"]]
        lines += [f"*{summary['model']}*: {summary['documents']} documents of {summary['length']} tokens; Captum's "
                  f"best internal_batch_size by sweep: {summary['captum_best_batch']}.", ""]
        lines += _accuracy_rows(rows, section["max_steps"]) + [""] + _evaluation_ratios(rows, summary) + [""]
    return lines + ["Cells: the smallest power-of-two n_steps meeting the tolerance for every document, the model "
                    "evaluations over all documents (auto: each document's own, the most in n_steps) and the "
                    "median time; in brackets fastig's speed-up over Captum with the same rule (per rule), and "
                    "over Captum's fastest rule (last rows), at the same tolerance."]


def _accuracy_rows(rows: list[dict], max_steps: int) -> list[str]:
    tolerances = sorted({r["tolerance"] for r in rows}, reverse=True)
    lines = ["| rule | provider | " + " | ".join(f"\\|δ\\| <= {t:g} \\|ΔF\\|" for t in tolerances) + " |",
             "|---|---|" + "---:|" * len(tolerances)]
    cells, fastest = {}, {}
    for r in rows:
        if r["n_steps"] is None:
            cell = f"> {max_steps} steps"
        else:
            cell = f"{r['n_steps']} steps ({r['evaluations']}), {r['seconds']:.3g} s"
            if r.get("speedup_vs_captum_same_rule"):
                cell += f" ({r['speedup_vs_captum_same_rule']:.2f}x)"
            best = fastest.setdefault((r["provider"], r["tolerance"]), r)
            if r["seconds"] < best["seconds"]:
                fastest[(r["provider"], r["tolerance"])] = r
        cells.setdefault((r["method"], r["provider"]), {})[r["tolerance"]] = cell
    for (method, provider), by_tolerance in sorted(cells.items()):
        lines.append(f"| {method} | {provider} | " + " | ".join(by_tolerance[t] for t in tolerances) + " |")
    for provider in sorted({p for p, _ in fastest}):
        row = [fastest.get((provider, t)) for t in tolerances]
        lines.append(f"| **fastest rule** | {provider} | " + " | ".join(
            f"{r['method']}: {r['seconds']:.3g} s" + (f" ({r['speedup_vs_captum_fastest_rule']:.2f}x)"
                                                     if r.get("speedup_vs_captum_fastest_rule") else "")
            if r else "–" for r in row) + " |")
    return lines


def _evaluation_ratios(rows: list[dict], summary: dict) -> list[str]:
    """auto's evaluations against Gauss-Legendre's (Captum's default rule) found three ways."""
    auto = {r["tolerance"]: r["evaluations"] for r in rows if r["method"] == "auto"}
    ladder = {r["tolerance"]: r["evaluations"] for r in rows
              if r["provider"].startswith("captum") and r["method"] == "gausslegendre"}
    documents, default = summary["documents"], summary["captum_default_steps"]

    def ratio(theirs, t):
        return f"{theirs} = {theirs / auto[t]:.1f}x" if theirs and auto.get(t) else f"{theirs or '–'}"

    lines = []
    for t in sorted(auto, reverse=True):
        hindsight = next(h["n_steps"] for h in summary["hindsight"] if h["tolerance"] == t)
        met_by_default = sum(d <= t for d in summary["captum_default_relative_delta"])
        lines.append(
            f"- {t:g}: auto {auto[t] or '–'} evaluations; Gauss-Legendre: power-of-two n for all documents "
            f"{ratio(ladder.get(t), t)}; each document's smallest n in hindsight "
            + (ratio(sum(hindsight), t) if all(hindsight) else f"more than {scenarios.HINDSIGHT_MAX_STEPS} for a document")
            + f"; Captum's defaults (n_steps={default}) {ratio(default * documents, t)}, meeting it for "
            f"{met_by_default} of {documents} documents.")
    return ["Model evaluations over all documents:"] + lines
def _step_table(section: dict) -> list[str]:
    lines = ["| model, precision, attention | tokens | sequences | time (s) | first call (s) | token-steps/s | peak MB "
             "| GFLOP/s (of square matmul peak) | of the peak at the model's shapes | vs HF attention | time / BERT's |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in section["rows"]:
        share = f" ({r['fraction_of_peak']:.1%})" if r["fraction_of_peak"] is not None else ""
        lines.append(f"| {r['provider']} | {r['length']} | {r['sequences']} | {r['seconds']:.3g} "
                     f"| {r['first_call_seconds']:.3g} | {r['token_steps_per_s']:.0f} | {r['peak_memory_mb']:.0f} "
                     f"| {r['achieved_gflops']:.1f}{share} | {r['fraction_of_model_shape_peak']:.1%} of "
                     f"{r['model_shape_peak_gflops']:.0f} | {_ratio(r['speedup_vs_hf_attention'])} "
                     f"| {_number(r['time_vs_bert'], 3)} |")
    lines += ["", "GFLOP/s counts useful work (a Longformer token sees its window and itself) of the full model's "
              "step. The peak at the model's shapes is the best of its own matmuls ([tokens, H] by [H, 3H], [H, 4H], "
              "[4H, H]) measured in the same run. BERT runs where its positions reach (512 tokens); time / BERT's "
              "compares the same step of the same-shape BERT."]
    return lines


def _compiled_table(section: dict) -> list[str]:
    lines = ["| model, precision, attention | tokens | sequences | time (s) | first call (s) | peak MB "
             "| GFLOP/s (of square matmul peak) | vs eager |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in section["rows"]:
        share = f" ({r['fraction_of_peak']:.1%})" if r["fraction_of_peak"] is not None else ""
        lines.append(f"| {r['provider']} | {r['length']} | {r['sequences']} | {r['seconds']:.3g} "
                     f"| {r['first_call_seconds']:.3g} | {r['peak_memory_mb']:.0f} | {r['achieved_gflops']:.1f}{share} "
                     f"| {r['speedup_vs_eager']:.2f}x |")
    return lines + ["", "Each row in its own process, as the engine runs the step (the compiled rows with the "
                        "parameters frozen, which fastig.compiled does; eager autograd.grad skips weight gradients "
                        "anyway). First call: the compilation included (the engine reports it apart, "
                        "stats.seconds.compile); torch's on-disk compile cache can shorten it on a second run."]


def _profile_table(section: dict) -> list[str]:
    lines = ["| model, precision, attention | tokens | sequences | # | operator | calls per step | ms per step "
             "| share |", "|---|---:|---:|---:|---|---:|---:|---:|"]
    for r in section["rows"]:
        name = r["name"].replace("|", "\\|")
        name = name if len(name) <= 90 else name[:87] + "..."
        lines.append(f"| {r['provider']} | {r['length']} | {r['sequences']} | {r['rank']} | `{name}` "
                     f"| {r['calls_per_step']:.3g} | {r['ms_per_step']:.3g} | {r['share']:.1%} |")
    steps = {(r["provider"], r["length"]): r for r in section["rows"]}
    return lines + ["", "Each operator's own time (on a GPU the CUDA kernels' time on the device, on a CPU the "
                        "operators' CPU time), per step, over the timed steps of one process; share: of all "
                        "operators' own time in the step. Profiled step wall time: "
                        + "; ".join(f"{provider} {length} tokens {r['profiled_seconds']:.3g} s "
                                    f"({r['operator_ms_per_step']:.4g} ms of operators)"
                                    for (provider, length), r in steps.items()) + "."]


def _processes_table(section: dict) -> list[str]:
    lines = ["| task | tokens | documents | steps | processes | time (s) | token-steps/s | speed-up | efficiency |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in section["rows"]:
        lines.append(f"| {r['task']} | {r['length']} | {r['documents']} | {r['n_steps']} | {r['processes']} "
                     f"| {r['seconds']:.2f} | {r['token_steps_per_s']:.0f} | {r['speedup']:.2f}x | {r['efficiency']:.2f} |")
    return lines + ["", "Wall time of the whole command, model loading and process start included, timed once; "
                        "efficiency = speed-up / processes."]


def markdown(report: dict) -> str:
    m, peaks = report["machine"], report["matmul_peak_flops"]
    lines = [f"Device: **{m['device']}** ({m['cores']} cores, {m['torch_threads']} torch threads); torch {m['torch']}, "
             f"transformers {m['transformers']}, captum {m['captum']}, triton {m['triton'] or 'not installed'}; "
             f"{report['date']}, mode `{report['mode']}`, median of {report['repeats']} timed runs after a "
             f"warm-up, each in its own process. Measured matmul peak ({peaks['size']}²): "
             + ", ".join(f"{name} {peaks[name] / 1e9:.0f} GFLOP/s" for name in DTYPES if name in peaks)
             + f". Suite wall time {report['seconds'] / 60:.1f} min.", ""]
    if "stopped" in report:
        lines += [f"**Stopped early** {report['stopped']}. The scenarios before it ran whole; its section, where "
                  "there is one, holds the rows it measured before the stop; the scenarios after it did not run.", ""]
    for section in report["scenarios"]:
        sweep = (f"; Captum's best internal_batch_size by sweep: {section['captum_best_batch']}"
                 if "captum_best_batch" in section else "")
        lines += [f"**{section['name']}** — {section['title']}: {section['model']}{sweep}.", ""]
        table = {"equal_accuracy": _accuracy_table, "model_step": _step_table, "default_path": _default_path_table,
                 "compiled_step": _compiled_table, "step_profile": _profile_table,
                 "processes": _processes_table, "several_targets": _targets_table,
                 "tools": _tools_table}.get(section["name"], _comparison_table)
        lines += table(section) + [""]
    return "\n".join(lines)


def _plot_lines(rows: list[dict], x_key: str) -> dict[str, list[dict]]:
    """Each fastig provider, Captum with the seed's batch, and the fastest Captum batch at each x
    (the sweep's batch changes with length, so it is one line by role, not by batch)."""
    lines = {}
    for row in rows:
        if row["provider"].startswith("fastig") or row["batch"] == CAPTUM_SEED_BATCH:
            lines.setdefault(row["provider"], []).append(row)
    fastest = {}
    for row in (r for r in rows if r["provider"].startswith("captum")):
        best = fastest.get(row[x_key])
        if best is None or row["seconds"] < best["seconds"]:
            fastest[row[x_key]] = row
    lines["fastest Captum batch"] = list(fastest.values())
    return lines


def plot(report: dict, path: Path) -> bool:
    """Time and peak memory against n_steps and length, one line per provider; False if no sweep ran."""
    sweeps = [s for s in report["scenarios"] if s["name"] in ("steps_sweep", "length_sweep")]
    if not sweeps:
        return False
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, len(sweeps), figsize=(5.5 * len(sweeps), 7), squeeze=False)
    for column, section in enumerate(sweeps):
        x_key = "n_steps" if section["name"] == "steps_sweep" else "length"
        for y, (key, label) in enumerate((("seconds", "time (s)"), ("peak_memory_mb", "peak memory (MB)"))):
            ax = axes[y][column]
            for name, rows in _plot_lines(section["rows"], x_key).items():
                ax.plot([r[x_key] for r in rows], [r[key] for r in rows], marker="o", label=name)
            ax.set_xscale("log", base=2)
            ax.set_xlabel(x_key.replace("_", " "))
            ax.set_ylabel(label)
            if y == 0:
                ax.set_title(f"{section['title']}\n{section['model']}", fontsize=9)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    figure.suptitle(f"{report['machine']['device']}, {report['date']}", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def slug(report: dict) -> str:
    """<device>-<mode>[-<scenario>...]-<date>[-stopped]: the file name of a run's results (CPU names carry the
    core count; a run of some scenarios names them, so that it does not overwrite the day's run of the suite;
    a run stopped early says so, so that it does not overwrite a whole one)."""
    m = report["machine"]
    name = m["device"] if m["device_type"] == "cuda" else f"{m['device']} {m['cores']}cores"
    name = re.sub(r"\b(\d+-core processor|processor|cpu|@.*)", "", name, flags=re.IGNORECASE)
    names = [s["name"] for s in report.get("scenarios", ())]
    some = names if names and set(names) != set(scenarios.SIZES) else []
    return "-".join(filter(None, [re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-"), report["mode"], *some,
                                  report["date"], "stopped" if "stopped" in report else None]))


def write(report: dict, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    stem = out / slug(report)
    paths = [stem.with_suffix(".json"), stem.with_suffix(".md")]
    paths[0].write_text(json.dumps(report, indent=1) + "\n")
    paths[1].write_text(markdown(report) + "\n")
    if plot(report, stem.with_suffix(".png")):
        paths.append(stem.with_suffix(".png"))
    return paths


def _readme_section(readme: Path) -> tuple[str, int, int]:
    """The README's text and the bounds of its bench section; refused before anything runs."""
    text = readme.read_text(encoding="utf-8") if readme.is_file() else ""
    if README_START not in text or README_END not in text:
        raise InputError(f"--readme {str(readme)!r} has no {README_START} ... {README_END} section to fill")
    return text, text.index(README_START) + len(README_START), text.index(README_END)


def update_readme(readme: Path, report: dict, paths: list[Path]) -> None:
    """Replace the README's table between the bench markers with this run's."""
    text, start, end = _readme_section(readme)
    base = readme.parent.resolve()
    links = ", ".join(f"[{p.suffix[1:]}]({p.resolve().relative_to(base) if p.resolve().is_relative_to(base) else p})"
                      for p in paths)
    readme.write_text(f"{text[:start]}\n{markdown(report)}\nFiles of this run: {links}.\n{text[end:]}", encoding="utf-8")


def build_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("scenarios", nargs="*", metavar="SCENARIO", help=f"any of {', '.join(scenarios.SIZES)} (default: all)")
    sizes = parser.add_mutually_exclusive_group()
    sizes.add_argument("--quick", dest="mode", action="store_const", const="quick",
                       help="sizes for a small CPU, minutes (the default without a GPU)")
    sizes.add_argument("--full", dest="mode", action="store_const", const="full",
                       help="the full sizes, for a GPU (the default with one)")
    sizes.add_argument("--tiny", dest="mode", action="store_const", const="tiny",
                       help="seconds, to check that the suite runs; the numbers mean nothing")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement, after a warm-up (default 3)")
    parser.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda if available")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="folder for JSON, markdown, plot")
    parser.add_argument("--readme", type=Path, help="also put the table into this README between the bench markers")
    return parser


def main(args: argparse.Namespace) -> list[Path]:
    if args.repeats < 1:
        raise InputError(f"--repeats {args.repeats}: give at least 1 (3 or more for numbers worth quoting)")
    unknown = [name for name in args.scenarios if name not in scenarios.SIZES]
    if unknown:
        raise InputError(f"unknown scenario {unknown[0]!r}; choose from {', '.join(scenarios.SIZES)}")
    if args.readme:
        _readme_section(args.readme)
    device = args.device or default_device()
    mode = args.mode or ("full" if device == "cuda" else "quick")
    try:
        report = run_suite(args.scenarios or list(scenarios.SIZES), mode, args.repeats, device)
    except SuiteStopped as stop:    # what was measured is written (not into the README), then the stop goes on
        if any(section["rows"] for section in stop.report["scenarios"]):
            log(f"stopped {stop.report['stopped']}; what was measured: "
                + ", ".join(map(str, write(stop.report, args.out))))
        cause = stop.__cause__
        cause.__suppress_context__ = True       # shown as it was raised, with its own cause
        raise cause
    paths = write(report, args.out)
    if args.readme:
        update_readme(args.readme, report, paths)
    print(markdown(report))
    for path in paths:
        print(f"wrote {path}")
    return paths
