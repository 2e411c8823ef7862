"""Explanations people look at: one self-contained HTML page per document, an index, per-class charts.

A page holds Captum's visualize_text record (True Label, Predicted Label with probability,
Attribution Label, Attribution Score, Word Importance with green/red highlighting; the score
of each word on hover), the top and bottom tokens, the convergence delta and the path
integrand s(alpha) as an inline SVG. Nothing is fetched: styles, the index's sorting script
and the charts (matplotlib PNGs as data URIs) are inside the files, so they open offline and
can be sent as they are. Every token and label is HTML-escaped.
"""

import base64
import html
import io
import json
from pathlib import Path

from ..display import captum_record_table, label_name, token_pairs
from ..errors import DataError
from ..result import DocumentResult
from .aggregate import class_rankings, read_run, words

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #111; max-width: 1100px; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
td.words { line-height: 2.1; max-width: 760px; }
mark { padding: 0.1em 0.15em; border-radius: 0.2em; color: #000; }
.tables { display: flex; gap: 2em; flex-wrap: wrap; }
th.sortable { cursor: pointer; }
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


def _pairs(merge_subwords: bool):
    """(text, score) pairs of a document to highlight: its tokens, or its words."""
    if not merge_subwords:
        return token_pairs
    return lambda d: words(d.tokens, d.token_scores.tolist(), d.special_positions, True)


def _ranked_table(title: str, ranked: list) -> str:
    rows = "".join(f"<tr><td>{t.position}</td><td>{html.escape(t.token)}</td><td>{t.score:+.4f}</td></tr>"
                   for t in ranked)
    return f"<div><h3>{html.escape(title)}</h3><table><tr><th>position</th><th>token</th><th>score</th></tr>{rows}</table></div>"


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


def _page(title: str, body: str, script: str = "") -> str:
    return (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>{body}"
            + (f"<script>{script}</script>" if script else "") + "</body></html>\n")


def document_page(record: DocumentResult, labels: dict, merge_subwords: bool = False, top_k: int = 20) -> str:
    """The HTML page of one document."""
    gap = record.output_at_input - record.output_at_baseline
    relative = f" ({abs(record.delta) / abs(gap):.1e} of |F(x) − F(b)| = {abs(gap):.4g})" if gap else ""
    top, bottom = record.top_bottom(top_k)
    body = (f"<h1>Document {html.escape(str(record.id))}</h1>"
            + captum_record_table([record], labels, _pairs(merge_subwords))
            + f"<p>Convergence delta: {record.delta:+.3e}{relative}. F(x) = {record.output_at_input:.4g}, "
            f"F(b) = {record.output_at_baseline:.4g}; {len(record.tokens)} tokens.</p>"
            + "<div class=\"tables\">" + _ranked_table(f"Top {len(top)} tokens", top)
            + _ranked_table(f"Bottom {len(bottom)} tokens", bottom) + "</div>"
            + "<h2>Path integrand</h2>" + integrand_svg(record.alphas.tolist(), record.integrand.tolist()))
    return _page(f"document {record.id}", body)


def _chart(rankings: list[tuple], title: str, column: int, top: int) -> str:
    """Top and bottom `top` tokens of a class by sum (column 1) or mean (column 2), as an embedded PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ordered = sorted(rankings, key=lambda row: -row[column])
    shown = ordered[:top] + [row for row in ordered[-top:] if row not in ordered[:top]]
    figure, ax = plt.subplots(figsize=(6, 0.22 * len(shown) + 1))
    ax.barh(range(len(shown)), [row[column] for row in shown],
            color=["#2ca02c" if row[column] > 0 else "#d62728" for row in shown])
    # "$" would start matplotlib's mathtext: tokens are plain text.
    ax.set_yticks(range(len(shown)), [row[0].replace("$", r"\$") for row in shown], fontsize=8)
    ax.invert_yaxis()
    ax.set_title(title.replace("$", r"\$"), fontsize=10)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    plt.close(figure)
    return f'<img alt="{html.escape(title)}" src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'


def index_page(records: list[DocumentResult], labels: dict, title: str, by: str = "label",
               merge_subwords: bool = False, top: int = 20) -> str:
    """The index: every document (sortable by any column, linked to its page) and per-class token charts."""
    def cell(value, shown):
        return f'<td data-value="{html.escape(str(value))}">{shown}</td>'

    rows = "".join(
        "<tr>" + cell(r.id, f'<a href="{html.escape(page_name(r))}">{html.escape(str(r.id))}</a>')
        + cell("" if r.label is None else r.label, html.escape(label_name(r.label, labels)))
        + cell(r.prediction, html.escape(label_name(r.prediction, labels)))
        + cell(r.probability, f"{r.probability:.3f}") + cell(r.delta, f"{r.delta:+.2e}")
        + cell(len(r.tokens), len(r.tokens)) + "</tr>" for r in records)
    headers = "".join(f'<th class="sortable">{name}</th>'
                      for name in ("document", "label", "prediction", "probability", "delta", "tokens"))
    grouping = by if by == "predicted" or all(r.label is not None for r in records) else "predicted"
    charts = ""
    for cls, ranking in sorted(class_rankings(records, grouping, merge_subwords).items()):
        name = html.escape(label_name(cls, labels))
        charts += (f"<h3>Class {name} (by {grouping})</h3><div class=\"tables\">"
                   + _chart(ranking, f"{label_name(cls, labels)}: top and bottom {top} by sum", 1, top)
                   + _chart(ranking, f"{label_name(cls, labels)}: top and bottom {top} by mean", 2, top) + "</div>")
    body = (f"<h1>{html.escape(title)}</h1><p>{len(records)} documents; click a column to sort.</p>"
            f"<table id=\"documents\"><thead><tr>{headers}</tr></thead><tbody>{rows}</tbody></table>"
            f"<h2>Tokens per class</h2>{charts}")
    return _page(title, body, SORT_SCRIPT)


def page_name(record: DocumentResult) -> str:
    return f"document-{record.id}.html"


def records_from_result(result: dict) -> list[DocumentResult]:
    """Records of the documents of a result.json (`fastig attribute --out`, Attribution.to_dict), numbered
    from 0 where they carry no id."""
    records = []
    for i, values in enumerate(result["documents"]):
        record = DocumentResult.from_json(values)
        record.id = i if record.id is None else record.id
        records.append(record)
    return records


def load(path: Path) -> tuple[list[DocumentResult], dict, str]:
    """(records, labels, title) of a `fastig dataset` folder or a result.json."""
    if path.is_dir():
        records, manifest = read_run(path)
        settings = manifest["settings"]
        return records, settings.get("labels", {}), f"fastig: {settings['data']}"
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
        records = records_from_result(result)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DataError(f"{str(path)!r} is neither a `fastig dataset` folder nor a result.json of "
                        f"`fastig attribute --out`: {err}") from err
    return records, result.get("labels", {}), f"fastig: {path.name}"


def write_report(records: list[DocumentResult], labels: dict, out: Path, title: str, merge_subwords: bool = False,
                 by: str = "label") -> Path:
    """One page per document and the index, in `out`; returns the index's path."""
    out.mkdir(parents=True, exist_ok=True)
    for record in records:
        (out / page_name(record)).write_text(document_page(record, labels, merge_subwords), encoding="utf-8")
    index = out / "index.html"
    index.write_text(index_page(records, labels, title, by, merge_subwords), encoding="utf-8")
    return index
