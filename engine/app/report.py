"""Explanations people look at: one self-contained HTML page per document, an index, per-class charts.

A document's page names the class its scores are toward (the target) first, then shows the
document's own text, full width, with every word (or token, with tokens=True) highlighted:
green toward the target, red away from it. Token scores of a long document are small (they are
normalized over all its tokens: about 0.03 each at 1,000 tokens), so the colours are scaled to
the document's 99th percentile of |score|, which the legend states; each word's normalized
score (Captum's scale) shows on hover. Above the text, the passages (sentences) that push most
each way link to their place in it; below it, the top and bottom words, the convergence delta,
how the result was computed, the path integrand s(alpha), where the data and model came from,
and a link back to the index.

A generated text's page (generation_page, of fastig.llm's result) is a matrix: a row per generated
token, a column per prompt token.

The index lists every document (sortable) and, per target (and label), the words that push most
toward and away from it by sum and by mean. Nothing is fetched: styles, the sorting script and the
charts (matplotlib PNGs as data URIs) are inside the files, so they open offline and can be sent
as they are. Every value drawn from a run (text, tokens, labels, ids, settings) is HTML-escaped,
and page names keep only safe characters.
"""

import base64
import hashlib
import html
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..display import color, label_name, shown_units, top_bottom_words
from ..errors import DataError
from ..result import DocumentResult
from ..summarize import ends
from .aggregate import check_grouping, ranked, read_run, tally
from .text import counted

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em 2em; color: #111; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
.text { white-space: pre-wrap; line-height: 1.9; font-size: 1.05em; max-width: none; }
mark { padding: 0.05em 0; border-radius: 0.15em; color: #000; }
.cut { color: #777; }
.cut::before { content: "[not read by the model: cut at its length] "; font-style: italic; color: #a00; }
.tables { display: flex; gap: 2em; flex-wrap: wrap; align-items: flex-start; }   /* charts keep their height */
th.sortable { cursor: pointer; }
.legend span { display: inline-block; width: 2.2em; height: 1em; vertical-align: middle; }
.facts td:first-child { color: #555; }
nav a { margin-right: 1em; }
"""

SORT_SCRIPT = """
document.querySelectorAll("th.sortable").forEach(function (header, column) {
  header.addEventListener("click", function () {
    var body = header.closest("table").tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    var ascending = header.dataset.order !== "ascending";
    header.dataset.order = ascending ? "ascending" : "descending";
    rows.sort(function (a, b) {
      var x = a.cells[column].dataset.value, y = b.cells[column].dataset.value;
      var nx = parseFloat(x), ny = parseFloat(y);
      var order = (isNaN(nx) || isNaN(ny)) ? x.localeCompare(y) : nx - ny;
      return ascending ? order : -order;
    });
    rows.forEach(function (row) { body.appendChild(row); });
  });
});
"""

SCALE_PERCENTILE = 99       # colours saturate at this percentile of a document's |score|
PASSAGES = 5                # sentences listed per direction
PASSAGE_CHARS = 160         # a listed sentence's length, longer ones shortened at a word's end
PAGES_BAR_DELAY_S = 2.0     # a report that takes longer shows a bar of its pages
# A sentence's last unit: its full stop, question or exclamation mark, also the ideographic and fullwidth ones
# of Chinese and Japanese (a Chinese document was one passage), then any closing quotes or brackets; in a
# script without spaces those are units of their own, and belong to the sentence they close.
CLOSERS = "'\")\\]\u201d\u2019\u00bb\u300d\u300f\uff09"
SENTENCE_END = re.compile(rf"[.!?\u3002\uff01\uff1f\uff0e\uff61][{CLOSERS}]*$")
CLOSING = re.compile(rf"[{CLOSERS}]+")
# ... but a Latin one ends a sentence only where the text goes on after a space or ends: "3.5%", "www.example.com"
# and "?!" are words split at their marks, and were listed as passages "gains of 3." and "5% over the baseline!".
LATIN_END = re.compile(rf"[.!?][{CLOSERS}]*$")


@dataclass
class Source:
    """Where a report's documents came from and how they were computed: shown on every page."""
    facts: dict         # e.g. {"model": ..., "data": ..., "n_steps": ...}; values are shown as text


def _scale(units) -> float:
    magnitudes = np.abs([u.score for u in units]) if units else np.zeros(1)
    return float(np.percentile(magnitudes, SCALE_PERCENTILE)) or float(magnitudes.max()) or 1.0


def _mark(unit, scale: float, anchor: str = "") -> str:
    return (f'<mark{anchor} style="background-color: {color(unit.score / scale)}" '
            f'title="{unit.score:+.4f}">{html.escape(unit.text)}</mark>')


def _sentences(units) -> list[list[int]]:
    """Indices of the units of each sentence: a sentence ends after a unit ending in . ! or ? (and the closing
    quotes after it), a Latin one where a space or the text's end follows."""
    def ends(i: int) -> bool:
        unit, following = units[i], units[i + 1] if i + 1 < len(units) else None
        if not SENTENCE_END.search(unit.text):
            return False
        if following is None or unit.end is None or following.start is None or not LATIN_END.search(unit.text):
            return True
        return following.start > unit.end or bool(CLOSING.fullmatch(following.text))

    sentences, current = [], []
    for i, unit in enumerate(units):
        if not current and sentences and CLOSING.fullmatch(unit.text):
            sentences[-1].append(i)
            continue
        current.append(i)
        if ends(i):
            sentences.append(current)
            current = []
    return sentences + ([current] if current else [])


def highlighted_text(record: DocumentResult, units, scale: float, starts: dict) -> str:
    """The document's text with each unit highlighted; the text between units (spaces, line breaks) kept as
    it is, and in a document cut at the model's length the text it did not read, grey and labelled (it was
    left off the page, which ended at the cut as if the document did). starts: {unit index: anchor id} of
    the sentences the summary links to."""
    if record.text is None or any(u.start is None for u in units):
        return " ".join(_mark(u, scale, f' id="{starts[i]}"' if i in starts else "") for i, u in enumerate(units))

    def between(text: str) -> str:
        # Text between units is spaces unless tokens were cut: a pair's first text loses its end, a text its tail.
        if record.truncated_tokens and text.strip():
            return f'<span class="cut">{html.escape(text)}</span>'
        return html.escape(text)
    pieces, end = [], 0
    for i, unit in enumerate(units):
        pieces.append(between(record.text[end:unit.start]))
        pieces.append(_mark(unit, scale, f' id="{starts[i]}"' if i in starts else ""))
        end = unit.end
    return "".join(pieces) + between(record.text[end:])


def _passage_text(record: DocumentResult, units, sentence: list[int]) -> str:
    first, last = units[sentence[0]], units[sentence[-1]]
    if record.text is not None and first.start is not None and last.end is not None:
        return " ".join(record.text[first.start:last.end].split())
    return " ".join(units[i].text for i in sentence)


def _shortened(text: str) -> str:
    """The text, or its first PASSAGE_CHARS cut at its last space there and marked "…" (cut mid-word, a
    passage ending "great w18 fi" read as if "fi" were a word)."""
    if len(text) <= PASSAGE_CHARS:
        return text
    kept = text[:PASSAGE_CHARS]
    return kept.rsplit(" ", 1)[0] + " …" if " " in kept else kept + "…"


def _passages(record: DocumentResult, units, sentences: list[list[int]], target: str) -> str:
    scored = sorted(((sum(units[i].score for i in s), n) for n, s in enumerate(sentences)), reverse=True)

    def listed(chosen, direction):
        # "No passages ..." where none scores of that sign (a one-sentence document): a heading over nothing read
        # as a page that failed to load.
        if not chosen:
            return f"<div><h3>No passages pushing {html.escape(direction)}</h3></div>"
        items = "".join(f'<li><a href="#s{n}">{html.escape(_shortened(_passage_text(record, units, sentences[n])))}'
                        f"</a> ({score:+.3f})</li>" for score, n in chosen)
        return f"<div><h3>Passages pushing most {html.escape(direction)}</h3><ol>{items}</ol></div>"
    positive = [p for p in scored if p[0] > 0][:PASSAGES]
    negative = [p for p in scored[::-1] if p[0] < 0][:PASSAGES]
    return ('<div class="tables">' + listed(positive, f"toward {target}") + listed(negative, f"away from {target}")
            + "</div>")


def _ranked_table(what: str, ranked_units) -> str:
    """"Top N <what>" and their table; "No <what>" where an end of the ranking is empty (no score of its sign)."""
    if not ranked_units:
        return f"<div><h3>No {html.escape(what)}</h3></div>"
    rows = "".join(f"<tr><td>{html.escape(u.text)}</td><td>{u.score:+.4f}</td><td>{u.count}</td></tr>"
                   for u in ranked_units)
    return (f"<div><h3>Top {len(ranked_units)} {html.escape(what)}</h3>"
            f"<table><tr><th>word</th><th>score</th><th>times</th></tr>{rows}</table></div>")


def integrand_svg(alphas: list[float], integrand: list[float], width: int = 640, height: int = 220) -> str:
    """s(alpha) = <dF/dz(z(alpha)), e(x) - e(b)> at the rule's points, as an inline SVG line chart."""
    if not integrand:
        return "<p>(no integrand recorded)</p>"
    pad = 40
    low, high = min(min(integrand), 0.0), max(max(integrand), 0.0)
    span = (high - low) or 1.0
    x = lambda a: pad + a * (width - 2 * pad)                               # noqa: E731
    y = lambda s: height - pad - (s - low) / span * (height - 2 * pad)      # noqa: E731
    points = " ".join(f"{x(a):.1f},{y(s):.1f}" for a, s in sorted(zip(alphas, integrand)))
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
            f'aria-label="path integrand">'
            f'<line x1="{pad}" y1="{y(0):.1f}" x2="{width - pad}" y2="{y(0):.1f}" stroke="#999"/>'
            f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{height - pad}" stroke="#999"/>'
            f'<polyline fill="none" stroke="#1f5fbf" stroke-width="2" points="{points}"/>'
            f'<text x="{width / 2}" y="{height - 8}" text-anchor="middle" font-size="12">alpha</text>'
            f'<text x="{pad}" y="{height - 8}" text-anchor="middle" font-size="12">0</text>'
            f'<text x="{width - pad}" y="{height - 8}" text-anchor="middle" font-size="12">1</text>'
            f'<text x="{pad - 4}" y="{pad - 8}" font-size="12">{high:.3g}</text>'
            f'<text x="{pad - 4}" y="{height - pad + 14}" font-size="12">{low:.3g}</text></svg>')


def _facts(rows: dict) -> str:
    cells = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>" for k, v in rows.items())
    return f'<table class="facts">{cells}</table>'


def _named(facts: dict, first: int = 4) -> str:
    """The facts' first names, and how many more: "model, tokenizer, layer, data and 18 more"."""
    names = [html.escape(str(name)) for name in facts]
    if len(names) <= first:
        return ", ".join(names)
    return f"{', '.join(names[:first])} and {len(names) - first} more"


def _page(title: str, body: str, script: str = "") -> str:
    return (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>{body}"
            + (f"<script>{script}</script>" if script else "") + "</body></html>\n")


def _legend(target: str, scale: float) -> str:
    steps = "".join(f'<span style="background-color: {color(v)}"></span>' for v in np.linspace(-1, 1, 9))
    return (f'<p class="legend">away from {html.escape(target)} {steps} toward {html.escape(target)}; colours '
            f"saturate at ±{scale:.3g}, the {SCALE_PERCENTILE}th percentile of this document's |score| (each "
            "word's score, on the scale of the normalized token scores, shows on hover).</p>")


def document_page(record: DocumentResult, labels: dict, tokens: bool = False, top_k: int = 20,
                  source: Source | None = None, index: str | None = "index.html") -> str:
    """The HTML page of one document (see the module's docstring). tokens: highlight tokens, not words."""
    target = label_name(record.target, labels)
    units = shown_units(record, tokens)
    scale = _scale(units)
    sentences = _sentences(units)
    starts = {s[0]: f"s{n}" for n, s in enumerate(sentences)}
    gap = record.output_at_input - record.output_at_baseline
    relative = f" ({abs(record.delta) / abs(gap):.1e} of |F(x) − F(b)| = {abs(gap):.4g})" if gap else ""
    top, bottom = top_bottom_words(units, top_k)
    how = {"evaluations": record.evaluations, "precision": record.precision or "as the run's settings",
           "estimated relative error": "–" if record.estimated_error is None else f"{record.estimated_error:.1e}",
           "accuracy met": "–" if record.tolerance_met is None else record.tolerance_met,
           "tokens": len(record.tokens), "tokens cut past max_length": record.truncated_tokens}
    unit = "token" if tokens else "word"
    body = ((f'<nav><a href="{html.escape(index)}">← all documents</a></nav>' if index else "")
            + f"<h1>Document {html.escape(str(record.id))}"
            + ("" if record.data_id is None else f" (id {html.escape(str(record.data_id))})")
            + f": attributions toward {html.escape(target)}</h1>"
            + f"<p>Predicted {html.escape(label_name(record.prediction, labels))} (p = {record.probability:.3f})"
            + ("" if record.target == record.prediction
               else f"; {html.escape(target)} p = {float(record.probs[record.target]):.3f}")
            + ("" if record.label is None else f"; label {html.escape(label_name(record.label, labels))}")
            + f"; attribution score (sum of the normalized token scores) {float(record.token_scores.sum()):+.2f}.</p>"
            + (f"<p>The model read {len(record.tokens)} tokens of this document and explains those: "
               f"{record.truncated_tokens} more were cut at its length (max_length), shown grey in the text "
               "below.</p>" if record.truncated_tokens else "")
            + _legend(target, scale)
            + _passages(record, units, sentences, target)
            + f'<h2>Text, each {unit} coloured</h2><div class="text">{highlighted_text(record, units, scale, starts)}</div>'
            + '<div class="tables">' + _ranked_table(f"{unit}s toward {target}", top)
            + _ranked_table(f"{unit}s away from {target}", bottom) + "</div>"
            + f"<h2>How it was computed</h2><p>Convergence delta {record.delta:+.3e}{relative}. "
            f"F(x) = {record.output_at_input:.4g}, F(b) = {record.output_at_baseline:.4g}.</p>" + _facts(how)
            + "<h3>Path integrand</h3>" + integrand_svg(record.alphas.tolist(), record.integrand.tolist())
            + ("" if source is None else "<h2>Source</h2>" + _facts(source.facts)))
    return _page(f"document {record.id}", body)


def generation_page(result, title: str = "Generated tokens and the prompt tokens they come from") -> str:
    """The page of a fastig.llm.GenerationAttribution: a matrix, a row per generated token and a column per
    prompt token, each cell coloured by that prompt token's attribution (green: raises the generated
    token's log-probability; red: lowers it), scaled to the matrix's 99th percentile of |attribution|
    (each value shows on hover); the last row sums each column (Captum's seq_attr)."""
    matrix = result.token_attr.float()
    scale = float(np.percentile(matrix.abs().numpy(), SCALE_PERCENTILE)) or float(matrix.abs().max()) or 1.0

    def cell(value: float) -> str:
        return f'<td style="background-color: {color(value / scale)}" title="{value:+.4f}">{value:+.2f}</td>'
    header = "".join(f"<th>{html.escape(token)}</th>" for token in result.prompt_tokens)
    rows = "".join(f"<tr><th>{html.escape(token)}</th>{''.join(cell(float(v)) for v in row)}"
                   f"<td>{float(result.delta[j]):+.1e}</td></tr>"
                   for j, (token, row) in enumerate(zip(result.output_tokens, matrix)))
    total = "".join(cell(float(v)) for v in result.seq_attr)
    steps = "".join(f'<span style="background-color: {color(v)}"></span>' for v in np.linspace(-1, 1, 9))
    body = (f"<h1>{html.escape(title)}</h1>"
            f"<p><b>Prompt:</b> {html.escape(''.join(result.prompt_tokens))}<br><b>Generated:</b> "
            f"{html.escape(result.output_text)}</p>"
            f'<p class="legend">lowers the generated token {steps} raises it (its log-probability); colours '
            f"saturate at ±{scale:.3g}, the {SCALE_PERCENTILE}th percentile of |attribution| (values on hover).</p>"
            f'<table class="matrix"><thead><tr><th>generated \\ prompt</th>{header}<th>delta</th></tr></thead>'
            f"<tbody>{rows}<tr><th>all generated</th>{total}<td></td></tr></tbody></table>"
            + _facts({"rule": f"{result.method}, {result.n_steps} steps", "generated tokens": len(result.output_tokens),
                      "prompt tokens attributed": len(result.prompt_tokens)}))
    return _page(title, body)


def _chart(rows, title: str, key: str, top: int) -> str:
    """The two ends (fastig.summarize.ends) of rows ranked by `key`, up to `top` each, as an embedded PNG sized to
    its labels."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    toward, away = ends(rows, lambda r: getattr(r, key), top)
    shown = toward + away[::-1]
    if not shown:
        return f"<p>{html.escape(title)}: no token often enough.</p>"
    longest = max(len(r.token) for r in shown)
    figure, ax = plt.subplots(figsize=(4.5 + 0.09 * longest, 0.32 * len(shown) + 1.2))
    values = [getattr(r, key) for r in shown]
    ax.barh(range(len(shown)), values, color=["#2ca02c" if v > 0 else "#d62728" for v in values])
    # "$" would start matplotlib's mathtext: tokens are plain text.
    ax.set_yticks(range(len(shown)), [r.token.replace("$", r"\$") for r in shown], fontsize=11)
    ax.tick_params(axis="x", labelsize=10)
    ax.invert_yaxis()
    ax.set_title(title.replace("$", r"\$"), fontsize=12)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    return f'<img alt="{html.escape(title)}" src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'


def index_page(records: list[DocumentResult], labels: dict, title: str, by: str = "target", tokens: bool = False,
               top: int = 15, source: Source | None = None) -> str:
    """The index: every document (sortable by any column, linked to its page) and per group token charts."""
    def cell(value, shown):
        return f'<td data-value="{html.escape(str(value))}">{shown}</td>'

    with_target = several_targets_each(records)

    def estimated_error(r) -> str:      # "(short)" where max_steps stopped the default call first
        if r.estimated_error is None:
            return cell("", "")
        return cell(r.estimated_error, f"{r.estimated_error:.1e}" + (" (short)" if r.tolerance_met is False else ""))
    # (header, cell) of each column; the data's own ids, labels and the default call's estimate only where some
    # record has them (a column of dashes said nothing)
    columns = [
        ("document", lambda r: cell(r.id, f'<a href="{html.escape(page_name(r, with_target))}">'
                                          f"{html.escape(str(r.id))}</a>")),
        *([("id", lambda r: cell("" if r.data_id is None else r.data_id,
                                 html.escape("" if r.data_id is None else str(r.data_id))))]
          if any(r.data_id is not None for r in records) else []),
        *([("label", lambda r: cell("" if r.label is None else r.label, html.escape(label_name(r.label, labels))))]
          if any(r.label is not None for r in records) else []),
        ("prediction", lambda r: cell(r.prediction, html.escape(label_name(r.prediction, labels)))),
        ("target", lambda r: cell(r.target, html.escape(label_name(r.target, labels)))),
        ("probability", lambda r: cell(r.probability, f"{r.probability:.3f}")),
        ("delta", lambda r: cell(r.delta, f"{r.delta:+.2e}")),
        ("tokens", lambda r: cell(len(r.tokens), f"{len(r.tokens)} ({r.truncated_tokens} cut)" if r.truncated_tokens
                                  else len(r.tokens))),
        *([("estimated error", estimated_error)] if any(r.estimated_error is not None for r in records) else [])]
    rows = "".join("<tr>" + "".join(shown(r) for _, shown in columns) + "</tr>" for r in records)
    headers = "".join(f'<th class="sortable">{name}</th>' for name, _ in columns)
    charts, unit = "", "tokens" if tokens else "words"
    for group, rows_of_group in sorted(tally(records, by, not tokens).rankings.items(), key=lambda g: str(g[0])):
        target = label_name(group if by == "target" else group[1], labels)
        name = target if by == "target" else f"label {label_name(group[0], labels)}, target {target}"
        charts += (f"<h3>{html.escape(name)}: {unit} pushing toward and away from {html.escape(target)}</h3>"
                   '<div class="tables">'
                   + _chart(ranked(rows_of_group, "sum"), f"{name}: by sum over the documents", "sum", top)
                   + _chart(ranked(rows_of_group, "mean"), f"{name}: by mean per occurrence (3 or more)", "mean", top)
                   + "</div>")
    how_many = (f"{counted(len({r.id for r in records}), 'document')}, {counted(len(records), 'explanation')} (one "
                "per document and target)" if with_target else counted(len(records), "document"))
    body = (f"<h1>{html.escape(title)}</h1><p>{how_many}; click a column to sort. A document's "
            "scores are toward its target, the class attributed.</p>"
            # Folded: a data set's 22 settings filled the first screen, and no document showed on it.
            + ("" if source is None else f"<details><summary>How these were computed ({_named(source.facts)})"
               f"</summary>{_facts(source.facts)}</details>")
            + f"<table id=\"documents\"><thead><tr>{headers}</tr></thead><tbody>{rows}</tbody></table>"
            f"<h2>{unit.capitalize()} per target</h2>{charts}")
    return _page(title, body, SORT_SCRIPT)


def page_name(record: DocumentResult, with_target: bool = False) -> str:
    """document-<id>.html (document-<id>-target-<class>.html where a document has several targets), the id
    reduced to letters, digits, - and _ (with a digest where that changed it): a page never lands outside the
    report folder, whatever a run folder's ids hold."""
    text = str(record.id)
    safe = re.sub(r"[^A-Za-z0-9_-]", "_", text)[:64]
    if safe != text:
        safe += "-" + hashlib.sha256(text.encode()).hexdigest()[:8]
    return f"document-{safe}-target-{record.target}.html" if with_target else f"document-{safe}.html"


def several_targets_each(records: list[DocumentResult]) -> bool:
    """Whether documents come with several records, one per target (`--target all`)."""
    return len({r.id for r in records}) < len(records)


def records_from_result(result: dict) -> list[DocumentResult]:
    """Records of the documents of a result.json (`fastig attribute --out`, Attribution.to_dict), numbered
    from 0 where they carry no id."""
    records = []
    for i, values in enumerate(result["documents"]):
        record = DocumentResult.from_json(values)
        record.id = i if record.id is None else record.id
        records.append(record)
    return records


@dataclass
class Loaded:
    """What a report is made of: the records, the label names, the title, the source; so_far: for a run not
    finished, what the records are (None: all of it)."""
    records: list[DocumentResult]
    labels: dict
    title: str
    source: Source
    so_far: str | None = None


def load(path: Path, unfinished: bool = False) -> Loaded:
    """The records of a `fastig dataset` folder (with `unfinished`, of a run not finished: its documents so far)
    or of a result.json."""
    if path.is_dir():
        run = read_run(path, unfinished)
        settings = run.manifest["settings"]
        so_far = None if run.finished else run.so_far
        title = f"fastig: {settings.get('data', path.name)}" + ("" if run.finished else
                                                 f" (unfinished: {run.of_all} so far)")
        return Loaded(run.records, settings.get("labels", {}), title, Source(settings), so_far)
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
        records = records_from_result(result)
        facts = result.get("source", {})
        facts.items()
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise DataError(f"{str(path)!r} is neither a `fastig dataset` folder nor a result.json of "
                        f"`fastig attribute --out`: {err}") from err
    return Loaded(records, result.get("labels", {}), f"fastig: {path.name}", Source(facts))


def write_report(records: list[DocumentResult], labels: dict, out: Path, title: str, tokens: bool = False,
                 by: str = "target", source: Source | None = None) -> Path:
    """One page per document and the index, in `out`; returns the index's path. Document pages an earlier
    report left in `out` go (its other files stay): a page of another run never sits beside this one's."""
    from tqdm.auto import tqdm

    # Refused before any page is written (a run without labels got a by-target index in report-by-label)
    check_grouping(records, by)
    out.mkdir(parents=True, exist_ok=True)
    with_target = several_targets_each(records)
    pages = {page_name(record, with_target): record for record in records}
    # ~17 ms a page on the 2-core EPYC: a data set of 25,000 documents wrote for minutes without a word
    for name, record in tqdm(pages.items(), total=len(pages), unit="page", desc="writing pages", leave=False,
                             delay=PAGES_BAR_DELAY_S, mininterval=1.0):
        (out / name).write_text(document_page(record, labels, tokens, source=source), encoding="utf-8")
    index = out / "index.html"
    index.write_text(index_page(records, labels, title, by, tokens, source=source), encoding="utf-8")
    for stale in out.glob("document-*.html"):
        if stale.name not in pages:
            stale.unlink()
    return index
