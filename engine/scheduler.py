"""How much work goes into one model call: measured speed, a memory budget, a probe chunk, out-of-memory retries.

A model call takes a chunk of (document, step) pairs, each one sequence of the group's
length. Two measurements size it. Memory: the first chunk at a new, longer length is a small
probe whose peak memory is measured, and no call takes more sequences than the budget then
holds. Speed: after the probe, calls grow (1, 2, 4, ... sequences' worth of tokens) while each
doubling cuts the time per token-step by at least MIN_GAIN, and then keep the best size found;
every call of the search does real work, none is thrown away. A small model thus gets large
calls (its per-call overhead shared), a large one the smallest call that keeps the cores busy,
and memory is not spent where it buys no speed. A call that still runs out of memory is redone
with half as many sequences, and later calls keep the smaller size.
"""

import ctypes
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from .errors import InputError, MemoryBudgetError
from .options import DEFAULT_MEMORY_BUDGET
PROBE_SEQUENCES = 1
# Calls are sized to this share of the room the budget leaves: the heap fragments differently
# from call to call, and a call of the measured size peaked up to ~7% above its estimate.
USABLE_SHARE = 0.9
# A doubled call must cut the time per token-step by this much for the search to go on; below it
# the time is within the noise of a shared machine and the memory is better left unused.
MIN_GAIN = 0.05
# Where the search starts: one sequence, or this many token-steps if that is more (short documents).
# On the 2-core EPYC a 4-layer Longformer-base step at 512 tokens ran within 7% of its best from 1 to
# 16 steps per call, so calls this size lose little while the search goes on.
START_TOKEN_STEPS = 2048

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_memory_budget(budget) -> int | float:
    """Bytes (an int, or a str such as "6GB", "512MiB") or a fraction of free memory ("80%" -> 0.8)."""
    if isinstance(budget, int) and not isinstance(budget, bool) and budget > 0:
        return budget
    if isinstance(budget, str):
        text = budget.strip().lower().replace(" ", "")
        if text.endswith("%"):
            try:
                percent = float(text[:-1])
            except ValueError:
                percent = 0.0
            if 0 < percent <= 100:
                return percent / 100
        match = re.fullmatch(r"(\d+(?:\.\d+)?)([kmgt]i?b|b)?", text)
        if match and float(match.group(1)) > 0:
            return int(float(match.group(1)) * _UNITS[match.group(2) or ""])
    raise InputError(f"memory_budget={budget!r} is not a budget: give bytes (an int, or '6GB', '512MiB') "
                     "or a share of free memory such as '80%'")


def chunk_size_override(chunk_size: int | None) -> int | None:
    """chunk_size, checked: a positive int of sequences per model call, or None."""
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise InputError(f"chunk_size={chunk_size!r} must be a positive integer (sequences per model call) or None")
    return chunk_size


def is_out_of_memory(error: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or the CPU allocator's RuntimeError when malloc fails."""
    return isinstance(error, torch.OutOfMemoryError) or (
        isinstance(error, RuntimeError) and "can't allocate memory" in str(error))


@dataclass
class MemoryStats:
    """The memory side of a run (bytes): the budget, the last probe (length, bytes in use before
    it, bytes per sequence), whether layers were recomputed, the peak, and out-of-memory retries."""
    memory_budget_bytes: int | None
    probe: dict | None
    recompute_layers: bool
    peak_memory_bytes: int | None
    out_of_memory_retries: int


class MemoryMeter:
    """Memory in use, its peak since `reset`, and what is free, for one device.

    CUDA: the caching allocator's counters. CPU: the process's resident set (VmRSS, and
    VmHWM reset through /proc/self/clear_refs), free memory is MemAvailable; where /proc
    is missing (not Linux) `works` is False and nothing is measured.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.works = device.type == "cuda" or os.access("/proc/self/clear_refs", os.W_OK)

    def reset(self, release_freed: bool) -> int:
        """Start a new peak; returns the bytes in use now.

        release_freed: on CPU, first hand the heap glibc retains back to the OS, or a probe
        reuses it and looks smaller than it is (it costs page faults later: probes only).
        """
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        elif self.works:
            if release_freed:
                _release_freed_cpu_memory()
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        return self.in_use()

    def in_use(self) -> int:
        if self.device.type == "cuda":
            return torch.cuda.memory_allocated(self.device)
        return _resident() if self.works else 0

    def peak(self) -> int:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device)
        return _proc_kib("/proc/self/status", "VmHWM") * 1024 if self.works else 0

    def free(self) -> int:
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            return free + torch.cuda.memory_reserved(self.device) - torch.cuda.memory_allocated(self.device)
        return (host_memory_available() or 0) if self.works else 0


def host_memory_available() -> int | None:
    """The host's available memory in bytes (MemAvailable), None where /proc/meminfo is missing (not Linux)."""
    try:
        return _proc_kib("/proc/meminfo", "MemAvailable") * 1024
    except (OSError, AttributeError):
        return None


def _proc_kib(path: str, key: str) -> int:
    with open(path) as f:
        return int(re.search(rf"^{key}:\s+(\d+)", f.read(), re.MULTILINE).group(1))


class CallSizeSearch:
    """The token-steps per call that run fastest, found by doubling while it pays (MIN_GAIN).

    Starts at START_TOKEN_STEPS (or one sequence); each call of the proposed size is measured;
    a doubling that does not cut the time per token-step by MIN_GAIN (or that the budget does
    not hold) settles the search on the best size measured.
    """

    def __init__(self):
        self.proposed = None        # token-steps per call to measure next; None: where the search starts
        self.best = None            # (token-steps, seconds per token-step) of the fastest call measured
        self.settled = False

    def token_steps(self, length: int) -> int:
        if self.settled:
            return self.best[0]
        return self.proposed or max(length, START_TOKEN_STEPS)

    def measured(self, length: int, sequences: int, seconds: float) -> None:
        # A smaller call than proposed (the last of a group, or all of a small one) says nothing of the size.
        if self.settled or sequences < max(1, self.token_steps(length) // length):
            return
        token_steps = sequences * length
        rate = seconds / token_steps
        if self.best is None or rate < self.best[1] * (1 - MIN_GAIN):
            self.best = (token_steps, rate)
            self.proposed = 2 * token_steps
        else:
            self.settled = True

    def bounded(self, token_steps: int) -> None:
        """The memory budget holds no more than this: the search cannot go further."""
        if not self.settled and self.proposed is not None and token_steps < self.proposed and self.best is not None:
            self.settled = True


class Scheduler:
    """Sequences per model call for each length, under a memory budget.

    memory_budget: bytes, or a fraction (parse_memory_budget) of the memory free when the
    Scheduler is made, on top of what the process already uses then. The probe, and the
    smaller size an out-of-memory error leaves, carry over from one run to the next.
    recomputable_layers: how many layers `models.layers_recomputed` can recompute in the
    backward pass, when one sequence with all activations kept does not fit the budget.
    """

    def __init__(self, device: torch.device, memory_budget=DEFAULT_MEMORY_BUDGET, recomputable_layers: int = 0):
        self.meter = MemoryMeter(device)
        budget = parse_memory_budget(memory_budget)
        if isinstance(budget, float):
            budget = self.meter.in_use() + int(budget * self.meter.free()) if self.meter.works else None
        elif self.meter.works and budget <= self.meter.in_use():
            raise MemoryBudgetError(f"memory_budget={memory_budget!r} is below the {self.meter.in_use() / 1e9:.2f} GB "
                                    "this process already uses (the model included); raise it")
        self.budget = budget
        self.search = CallSizeSearch()
        self.out_of_memory_token_steps = None   # the largest call known to fit after an out-of-memory error
        self.probe = None           # (length, bytes in use before, bytes per sequence) of the last probe
        self.held_bytes = 0         # held outside the calls (n_steps="auto" keeps its points' gradients)
        self.out_of_memory_retries = 0
        self.recomputable_layers = recomputable_layers
        # The first probe runs with layers recomputed, so that it needs the least memory, and decides.
        self._deciding = self.budget is not None and recomputable_layers > 0
        self.recompute_layers = False
        self._peak = 0

    def sequences_per_call(self, length: int, chunk_size: int | None = None) -> int | None:
        """Sequences of `length` tokens per call; None when a probe must measure this length first.

        chunk_size: the caller's fixed choice, kept unless an out-of-memory error showed it too large.
        Otherwise the speed search's size (see `timed`), within what the memory budget holds.
        """
        if self.out_of_memory_token_steps is not None and chunk_size is not None:
            chunk_size = min(chunk_size, max(1, self.out_of_memory_token_steps // length))
        if chunk_size is not None:
            return chunk_size
        token_steps = self.search.token_steps(length)
        if self.out_of_memory_token_steps is not None:
            token_steps = min(token_steps, self.out_of_memory_token_steps)
        limit = max(1, token_steps // max(length, 1))
        if self.budget is None:
            return limit
        if self.probe is None or length > self.probe[0]:
            return None
        probed_length, in_use, per_sequence = self.probe
        # Linear in length from a longer probe: an over-estimate wherever memory grows faster.
        per_sequence *= length / probed_length
        fitting = int(USABLE_SHARE * (self.budget - in_use - self.held_bytes) // max(per_sequence, 1))
        if fitting < 1:         # not one sequence: recompute layers in the backward pass and probe again
            self.recompute(length)
            return None
        if fitting < limit:     # the budget, not speed, bounds the call from here on
            self.search.bounded(fitting * length)
        return min(fitting, limit)

    def timed(self, length: int, sequences: int, seconds: float) -> None:
        """A call of `sequences` x `length` took `seconds` in the model: the speed search's measurement."""
        self.search.measured(length, sequences, seconds)

    @contextmanager
    def measured(self, length: int, sequences: int):
        """Run a probe chunk of `sequences` x `length` and remember its peak per sequence.

        The first probe runs with layers recomputed, which needs the least memory. If the
        budget holds one sequence for every layer at that peak, where keeping all layers'
        activations surely fits, layers are kept from then on and the next chunk probes again.
        """
        self._peak = max(self._peak, self.meter.peak())
        in_use = self.meter.reset(release_freed=True)
        self.recompute_layers |= self._deciding
        yield
        peak = self.meter.peak()
        self.probe = (length, in_use, (peak - in_use) / sequences)
        self._peak = max(self._peak, peak)
        self.search = CallSizeSearch()      # a new length: its speeds are measured afresh
        if self._deciding:
            self._deciding = False
            if USABLE_SHARE * (self.budget - in_use) >= self.recomputable_layers * self.probe[2]:
                self.recompute_layers, self.probe = False, None

    def recompute(self, length: int) -> None:
        """When one sequence does not fit: recompute each layer's activations in the backward pass, and probe again."""
        if self.recompute_layers or not self.recomputable_layers:
            needs = "" if self.probe is None else f" (about {(self.probe[1] + self.probe[2]) / 1e9:.2f} GB with the model)"
            raise MemoryBudgetError(
                f"memory_budget of {self.budget / 1e9:.2f} GB is too small: one {length}-token sequence does not fit{needs}, "
                "even with its layers recomputed in the backward pass; raise the budget or shorten the documents")
        self.recompute_layers = True
        self.probe = None

    def halve(self, sequences: int, length: int) -> int:
        """After an out-of-memory error with `sequences` per call: the smaller size to redo it with."""
        if sequences <= 1:
            raise MemoryBudgetError(f"one {length}-token sequence does not fit in the device's memory; "
                                    "shorten the documents or use a device with more memory")
        self.out_of_memory_retries += 1
        smaller = sequences // 2
        self.out_of_memory_token_steps = min(self.out_of_memory_token_steps or smaller * length, smaller * length)
        if self.meter.device.type == "cuda":
            torch.cuda.empty_cache()
        return smaller

    def start_run(self) -> None:
        """Start measuring one run's peak memory."""
        self._peak = 0
        self.meter.reset(release_freed=False)

    def run_stats(self) -> MemoryStats:
        """Budget, probe and peak memory of the run since `start_run`."""
        probe = None if self.probe is None else {"length": self.probe[0], "in_use_bytes": self.probe[1],
                                                 "bytes_per_sequence": round(self.probe[2])}
        return MemoryStats(self.budget, probe, self.recompute_layers,
                           max(self._peak, self.meter.peak()) if self.meter.works else None,
                           self.out_of_memory_retries)


# Documents packed into one group hold their endpoints and accumulators (four fp32 [L, H] tensors
# each) for the group's life: at most this many tokens of them, 200 MB at hidden size 768.
PACKED_TOKENS = 16384


def pack(lengths: list[int], keys: list, sequences_per_call: int | None, n_steps: int, slack: float = 0.125) -> int:
    """How many of the documents (their model lengths sorted longest first) share the next calls.

    The first one and those within `slack` of its length with the same key (the kind of
    baseline and of attention): as many as fill one call with all their steps, or, where one document's steps
    take several calls, as many as PACKED_TOKENS allows, so that calls run full across documents.
    A document whose key is None (its own baseline embedding), or of a length still to be
    measured (sequences_per_call None), goes alone.
    """
    if sequences_per_call is None or keys[0] is None:
        room = 1
    elif sequences_per_call >= n_steps:
        room = sequences_per_call // n_steps
    else:
        room = max(1, PACKED_TOKENS // lengths[0])
    count = 1
    while count < min(room, len(lengths)) and keys[count] == keys[0] and lengths[count] >= lengths[0] * (1 - slack):
        count += 1
    return count


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_GLIBC_DEFAULT_THRESHOLD = 128 * 1024      # both thresholds' defaults
_glibc_tuned = False        # for good: retain_freed_cpu_memory()
_retaining_calls = 0        # calls inside retained_cpu_memory() now


def _libc():
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:   # not glibc (macOS, musl, Windows)
        return None


def _release_freed_cpu_memory() -> None:
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def _keep_freed_blocks(libc) -> bool:
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, 1 << 30)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))


def _opted_out() -> bool:
    return os.environ.get("FASTIG_RETAIN_CPU_MEMORY", "1") == "0"


def retain_freed_cpu_memory() -> bool:
    """Ask glibc to keep freed blocks of up to 1 GiB for reuse instead of unmapping them, for the
    rest of this process's life (fastig.retain_freed_cpu_memory; the `fastig` command calls it).

    Every step allocates and frees activations of tens to hundreds of MB; glibc's default
    maps each afresh and returns it to the OS, and the page faults cost more than the
    math: a 4-layer Longformer-base step at 512 tokens, 8 steps per call, took 15.6 s
    with 7.5 s in the kernel, and 9.5 s with 0.02 s after this (2-core EPYC). The process
    keeps its peak heap until it exits. It changes the allocator of the whole process, for
    every library in it, so no library call does it for good: a program opts in (each
    attribution call does it only while it runs, see retained_cpu_memory), and benchmarks
    give Captum's runs the same setting. FASTIG_RETAIN_CPU_MEMORY=0 turns both off.
    Returns whether the setting is in force.
    """
    global _glibc_tuned
    if _glibc_tuned or _opted_out():
        return _glibc_tuned
    libc = _libc()
    _glibc_tuned = libc is not None and _keep_freed_blocks(libc)
    return _glibc_tuned


def cpu_memory_retained() -> bool:
    """Whether glibc keeps freed memory for reuse now (for good, or inside an attribution call)."""
    return _glibc_tuned or _retaining_calls > 0


@contextmanager
def retained_cpu_memory():
    """Inside the block glibc keeps freed memory for reuse, as retain_freed_cpu_memory() does for good;
    at its end both thresholds are glibc's defaults again and the kept heap goes back to the OS
    (malloc_trim). What stays changed: glibc no longer raises its mmap threshold by itself (any
    explicit setting turns that off). Nothing happens where the setting is in force for good, where
    FASTIG_RETAIN_CPU_MEMORY=0, or without glibc."""
    global _retaining_calls
    libc = None if _glibc_tuned or _opted_out() else _libc()
    if libc is None or (_retaining_calls == 0 and not _keep_freed_blocks(libc)):
        yield
        return
    _retaining_calls += 1
    try:
        yield
    finally:
        _retaining_calls -= 1
        if _retaining_calls == 0:
            libc.mallopt(_M_MMAP_THRESHOLD, _GLIBC_DEFAULT_THRESHOLD)
            libc.mallopt(_M_TRIM_THRESHOLD, _GLIBC_DEFAULT_THRESHOLD)
            libc.malloc_trim(0)


# Resident memory up to this above what a group takes is never handed back: not worth the page faults.
HEAP_SLACK = 512 * 2**20


class RetainedHeapBound:
    """Where glibc keeps freed memory (cpu_memory_retained), the process's resident memory, bounded: at most
    what a group of documents has been seen to take, plus HEAP_SLACK, above what the last trim left.

    The freed heap fragments (the small records made as each group ends stay between its freed blocks), so
    later groups' blocks come from fresh memory: malloc's memory in use stayed flat while what it held free
    grew by ~2-10 MB a group without bound (a BERT of hidden 384, reviews of 20-300 tokens: +390 MB over 800
    reviews in the commands' process-wide setting, ~12 GB at 25,000). After each group `group_done` reads the
    resident set; past the bound, malloc_trim hands the freed memory back, and the next group faults its
    working memory in again (~23 ms a trim, about one in 400 groups there: 8 calls of 100 reviews took 40-41 s
    without the bound, 39-42 s with it; a bound of 256 MB above what the last trim left trimmed every ~12
    groups and cost ~5%). Not twice what a group takes: a call the budget sizes can take GBs, and as much
    again of waste is more than a bound should allow.
    What a group takes is measured after the first group following the start and each trim. Memory in use
    (attributions kept) also counts: a trim then returns little, and the bound moves up with it. One for an
    Engine's life, as the heap lives across its calls; nothing is done without glibc or /proc.
    """

    def __init__(self):
        self.works = _libc() is not None and os.access("/proc/self/status", os.R_OK)
        self.trims, self.limit, self.group_bytes = 0, None, 0
        self.after_trim = _resident() if self.works else None     # the start counts as a trim

    def group_done(self) -> None:
        if not self.works or not cpu_memory_retained():
            return
        resident = _resident()
        if self.limit is None:
            self.group_bytes = max(self.group_bytes, resident - self.after_trim)
            self.limit = self.after_trim + self.group_bytes + HEAP_SLACK
        elif resident > self.limit:
            _release_freed_cpu_memory()
            self.trims += 1
            self.after_trim, self.limit = _resident(), None


def _resident() -> int:
    return _proc_kib("/proc/self/status", "VmRSS") * 1024
