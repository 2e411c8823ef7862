"""What the commands print about a result: per document its prediction, delta and top/bottom words,
and one line on how the run went."""

from __future__ import annotations

import sys
import unicodedata
from itertools import zip_longest
from typing import TYPE_CHECKING

if TYPE_CHECKING:      # annotations only: the command line imports this module before torch (fastig.options)
    from ..result import Attribution, RunStats


def print_result(result: Attribution, k: int, documents=None, file=None, tokens: bool = False) -> None:
    """Prediction, probability, delta and the top/bottom-k words (with tokens: tokens) of each record
    (default: all), classes by the result's label names. Words as the text has them: a byte-level BPE's
    "bor" + "ing" is "boring". Each is numbered by its id, or without one by its place."""
    file = file or sys.stdout
    unit = "tokens" if tokens else "words"

    def name(class_id):
        return result.labels.get(str(class_id), class_id)

    for i in range(len(result)) if documents is None else documents:
        d = result.documents[i]
        # another class than the predicted one: its own probability (a multi-label model's sigmoid)
        attributed = name(d.target)
        if d.target != d.prediction:
            attributed = f"{attributed} (p={float(d.probs[d.target]):.3f})"
        cut = f" ({d.truncated_tokens} cut)" if d.truncated_tokens else ""
        print(f"document {i if d.id is None else d.id}: {len(d.tokens)} tokens{cut} | "
              f"predicted {name(d.prediction)} "
              f"(p={d.probability:.3f}) | attributed class {attributed} | delta {d.delta:+.2e}", file=file)
        top, bottom = d.top_bottom_words(k, tokens)
        # A word's count beside its score (its best or worst occurrence's): one that occurs often may stand in
        # both lists, which without it read as a contradiction.
        print(f"  {'top ' + unit:<{16 + CELL_MARGIN + TIMES}}{'bottom ' + unit}", file=file)
        print_columns([(t.text, t.score, t.count) for t in top], [(b.text, b.score, b.count) for b in bottom], 16,
                      file)


def counted(n: int, noun: str) -> str:
    """"1 document", "2 documents": a one-document run's lines said "1 documents"."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


CELL_MARGIN = 12     # a score (9 columns) and the space after it
TIMES = 5           # " ×123" after a score, where cells hold a count


def print_columns(left: list, right: list, width: int, file=None) -> None:
    """Two columns of (text, score) or (text, score, count) side by side, row by row; the shorter column ends
    blank (the two ends of a ranking may differ in length: fastig.summarize.ends). A count above 1 is shown
    after the score as "×count". A text wider than `width` terminal columns ends in "…"; Chinese and Japanese
    characters take two columns each (counted as one, they pushed the scores out of line)."""
    def shown(text: str) -> str:
        if _columns(text) > width:
            text = text[:width]         # a character takes a column or more: at most `width` are kept
            while _columns(text) > width - 1:
                text = text[:-1]
            text += "…"
        return text + " " * (width - _columns(text))
    counted = any(len(cell) > 2 for cell in left + right)

    def times(cell) -> str:
        if not counted:
            return ""
        return (f" ×{cell[2]}" if len(cell) > 2 and cell[2] > 1 else "").ljust(TIMES)
    blank = " " * (width + CELL_MARGIN + (TIMES if counted else 0))
    for row in zip_longest(left, right):
        cells = [blank if cell is None else f"{shown(cell[0])}{cell[1]:+9.4f}{times(cell)}   " for cell in row]
        print(("  " + "".join(cells)).rstrip(), file=file)


def _columns(text: str) -> int:
    """The terminal columns `text` takes: two for a wide (East Asian) character, none for a combining mark."""
    return sum(0 if unicodedata.category(c) in ("Mn", "Me") else 2 if unicodedata.east_asian_width(c) in "WF" else 1
               for c in text)


def _memory_line(stats: RunStats) -> str:
    memory = stats.memory
    line = f"up to {max(stats.chunk_size)} sequences per call"
    if memory.peak_memory_bytes is not None:
        line += f", peak {memory.peak_memory_bytes / 1e9:.2f} GB"
    if memory.memory_budget_bytes is not None:
        line += f" of a {memory.memory_budget_bytes / 1e9:.2f} GB budget"
    return line + (", layers recomputed" if memory.recompute_layers else "")


def run_line(result: Attribution) -> str:
    """Throughput, device, precision, time and memory of the run; first, with n_steps auto the evaluations, and
    for the default call the evaluations and the error it estimates (which it states, and printed nowhere else)."""
    stats = result.stats
    line = ""
    if result.n_steps == "auto":
        line = (f"n_steps auto: {[d.evaluations for d in result.documents]} model evaluations per document for "
                f"|delta| <= {stats.tolerance:g} |F(x) - F(b)| (met: {[d.tolerance_met for d in result.documents]})\n")
    elif result.n_steps is None:
        fewest, most = min(d.evaluations for d in result.documents), max(d.evaluations for d in result.documents)
        unmet = sum(not d.tolerance_met for d in result.documents)
        met = (f"not met by {unmet} of {len(result)} (stopped at --max-steps {stats.max_steps})" if unmet else
               f"met by all {len(result)}")
        # several targets of a text (--target all): each record is an explanation integrated on its own
        ids = [d.id for d in result.documents]
        unit = "explanation" if None not in ids and len(set(ids)) < len(ids) else "document"
        line = (f"accuracy {stats.accuracy:g}: {fewest}{f'-{most}' if most != fewest else ''} model evaluations per "
                f"{unit}, estimated error up to {max(d.estimated_error for d in result.documents):.1e} ({met})\n")
    compiling = f", {stats.seconds.compile:.2f} s of them compiling" if stats.seconds.compile else ""
    return line + (f"{stats.token_steps_per_s:.0f} token-steps/s on {stats.device} in {stats.precision} "
                   f"({stats.seconds.total:.2f} s{compiling}; {_memory_line(stats)}; {stats.fallbacks} chunks redone "
                   "in fp32)")
