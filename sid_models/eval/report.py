"""The evaluation report: every system side by side, as Markdown, self-contained HTML and JSON.

Files written by `write_report(report, folder)`:
- `report.md` (tables, plots linked as `plots/*.png`), `report.html` (same content, plots
  embedded as base64 PNG, no external file needed), `plots/*.png`;
- `metrics.json`: headline numbers (the headline system's metrics at top level, then every
  system's quality and speed figures under `systems`) — DVC's metrics file.
"""
from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from .harness import SystemResult

QUALITY_COLUMNS = ("recall@1", "recall@5", "recall@10", "recall@50", "ndcg@10", "mrr")
SEGMENT_COLUMNS = ("recall@10_head", "recall@10_torso", "recall@10_tail", "recall@10_cold", "recall@10_seen",
                   "recall@10_single", "recall@10_multi")
SPEED_COLUMNS = ("p50_ms", "p95_ms", "qps")
SEGMENT_ORDER = ("head", "torso", "tail", "cold")
HEADLINE_KEYS = QUALITY_COLUMNS + SEGMENT_COLUMNS + SPEED_COLUMNS + ("n_queries",)
CURVE_KEYS = ("loss", "recall@10", "ndcg@10")

Curves = dict[str, dict[str, list[tuple[int, float]]]]   # stage -> metric -> [(step, value)]


@dataclass
class EvalReport:
    dataset: str
    split: str
    systems: list[SystemResult]
    headline_system: str
    descriptions: dict[str, str] = field(default_factory=dict)                # system -> what it is (eval.systems about)
    sid_segments: dict[str, list[dict]] = field(default_factory=dict)   # variant -> quantize.table.segment_summary
    sid_health: dict[str, dict] = field(default_factory=dict)           # variant -> quantize.health.codebook_health
    curves: Curves = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    # system -> metric -> (low, high): 95 % bootstrap interval over queries (metrics.bootstrap_intervals)
    intervals: dict[str, dict[str, tuple[float, float]]] = field(default_factory=dict)
    # "<headline> − <baseline>" -> metric -> (mean difference, low, high), paired bootstrap
    differences: dict[str, dict[str, tuple[float, float, float]]] = field(default_factory=dict)
    # [{"query": text, "systems": {system: [(title, relevant?), ...top 5]}}]
    examples: list[dict] = field(default_factory=list)

    def system(self, name: str) -> SystemResult:
        for result in self.systems:
            if result.name == name:
                return result
        raise KeyError(f"no system {name!r} in the report; systems: {[result.name for result in self.systems]}")

    def headline(self) -> dict:
        chosen = self.system(self.headline_system).flat()
        return {
            "dataset": self.dataset, "split": self.split, "headline_system": self.headline_system,
            **{key: chosen[key] for key in HEADLINE_KEYS if key in chosen},
            "systems": {result.name: {key: value for key, value in result.flat().items() if key in HEADLINE_KEYS}
                        for result in self.systems},
        }


def _format(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.1f}" if abs(value) >= 100 else f"{value:.4f}" if abs(value) <= 1 else f"{value:.2f}"
    return str(value)


LOWER_IS_BETTER = ("p50_ms", "p95_ms")


def table_rows(report: EvalReport, columns: Sequence[str], mark_best: bool = True) -> list[list[str]]:
    """One row per system; with `mark_best` the best value of each column carries a ★."""
    best = {}
    for column in columns:
        values = [result.flat()[column] for result in report.systems if isinstance(result.flat().get(column), float)]
        if mark_best and len(values) > 1:
            best[column] = min(values) if column in LOWER_IS_BETTER else max(values)
    return [[result.name, *(_format(result.flat().get(column))
                            + (" ★" if column in best and result.flat().get(column) == best[column] else "")
                            for column in columns)] for result in report.systems]


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def quality_table(report: EvalReport) -> str:
    """The headline Markdown table: one row per system, quality then speed."""
    columns = QUALITY_COLUMNS + ("recall@10_cold",) + SPEED_COLUMNS
    return markdown_table(("system", *columns), table_rows(report, columns, mark_best=False))


def _sid_rows(report: EvalReport) -> tuple[list[str], list[list[str]]]:
    header = ["variant", "segment", "items", "mean length", "collision rate", "max bucket"]
    rows = [[variant, row["segment"], str(row["n_items"]), _format(row["mean_length"]),
             _format(row["collision_rate"]), str(row["max_bucket"])]
            for variant, summary in report.sid_segments.items() for row in summary]
    return header, rows


def _health_rows(report: EvalReport) -> tuple[list[str], list[list[str]]]:
    keys = sorted({key for health in report.sid_health.values() for key, value in health.items()
                   if isinstance(value, (int, float)) and key not in ("n_items",)})
    return ["variant", *keys], [[variant, *(_format(health.get(key)) for key in keys)]
                                for variant, health in report.sid_health.items()]


def _sections(report: EvalReport) -> list[tuple[str, str, list[str], list[list[str]]]]:
    """(title, intro, header, rows) for every table of the report."""
    sid_header, sid_rows = _sid_rows(report)
    health_header, health_rows = _health_rows(report)
    n_queries = report.system(report.headline_system).metrics.get("n_queries")
    return [
        ("Quality", f"{n_queries} {report.split} queries with at least one relevant item; "
                    "Recall@K macro-averaged over queries, NDCG@10 with graded gains.",
         ["system", *QUALITY_COLUMNS], table_rows(report, QUALITY_COLUMNS)),
        ("Systems", "What each row is; ★ marks the best value of a column.", ["system", "what it is"],
         [[result.name, report.descriptions.get(result.name, "")] for result in report.systems]),
        ("By segment and label count", "Recall@10 over relevant (query, item) pairs whose item is in the segment "
                                       "(seen = head ∪ torso ∪ tail); single / multi = queries with one / several "
                                       "relevant items.",
         ["system", *SEGMENT_COLUMNS], table_rows(report, SEGMENT_COLUMNS)),
        ("Speed", "p50/p95: milliseconds per query at batch 1, from query text; qps: queries per second "
                  "over the whole split in large batches.",
         ["system", *SPEED_COLUMNS], table_rows(report, SPEED_COLUMNS)),
        ("Semantic IDs by segment", "Mean SID length, share of items sharing their SID, largest bucket.",
         sid_header, sid_rows),
        ("Codebook health", "Per-level utilisation and perplexity of each SID variant.", health_header, health_rows),
        ("Uncertainty", "95 % bootstrap intervals over the queries (resampled with replacement); a difference "
                        "whose interval excludes 0 is one the query sample supports.",
         ["system", *(f"{metric} [95 % interval]" for metric in INTERVAL_METRICS)], _interval_rows(report)),
        ("Example queries", "Top 5 titles of each system; ✓ marks a relevant item.", ["query", "system", "top 5"],
         _example_rows(report)),
    ]


INTERVAL_METRICS = ("recall@10", "ndcg@10")


def _interval_rows(report: EvalReport) -> list[list[str]]:
    def cell(mean: float, low: float, high: float) -> str:
        return f"{mean:.4f} [{low:.4f}, {high:.4f}]"

    rows = [[name, *(cell(report.system(name).metrics[metric], *bounds[metric]) for metric in INTERVAL_METRICS)]
            for name, bounds in report.intervals.items()]
    rows += [[name, *(cell(*figures[metric]) for metric in INTERVAL_METRICS)]
             for name, figures in report.differences.items()]
    return rows


def _example_rows(report: EvalReport) -> list[list[str]]:
    return [[example["query"] if position == 0 else "", system,
             " · ".join(("✓ " if relevant else "") + title for title, relevant in top)]
            for example in report.examples
            for position, (system, top) in enumerate(example["systems"].items())]


def render_markdown(report: EvalReport, plot_files: Mapping[str, str]) -> str:
    parts = [f"# Evaluation report — {report.dataset}, {report.split} split", "",
             f"Headline system: **{report.headline_system}**.", ""]
    for title, intro, header, rows in _sections(report):
        if rows:
            parts += [f"## {title}", "", intro, "", markdown_table(header, rows), ""]
    if plot_files:
        parts += ["## Plots", ""]
        parts += [f"![{name}]({path})" for name, path in plot_files.items()]
        parts.append("")
    if report.notes:
        parts += ["## Notes", "", *(f"- {note}" for note in report.notes), ""]
    return "\n".join(parts)


def render_html(report: EvalReport, plots: Mapping[str, bytes]) -> str:
    def table(header, rows):
        head = "".join(f"<th>{html.escape(cell)}</th>" for cell in header)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in rows)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    parts = [f"<h1>Evaluation report — {html.escape(report.dataset)}, {html.escape(report.split)} split</h1>",
             f"<p>Headline system: <b>{html.escape(report.headline_system)}</b>.</p>"]
    for title, intro, header, rows in _sections(report):
        if rows:
            parts += [f"<h2>{html.escape(title)}</h2>", f"<p>{html.escape(intro)}</p>", table(header, rows)]
    if plots:
        parts.append("<h2>Plots</h2>")
        parts += [f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,'
                  f'{base64.b64encode(png).decode()}"><figcaption>{html.escape(name)}</figcaption></figure>'
                  for name, png in plots.items()]
    if report.notes:
        parts += ["<h2>Notes</h2>", "<ul>" + "".join(f"<li>{html.escape(note)}</li>" for note in report.notes) + "</ul>"]
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;"
             "text-align:right}td:first-child,th:first-child{text-align:left}img{max-width:100%}")
    return (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>sid-retrieval evaluation</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>")


def _png(figure) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def _figure(width: float, height: float, ncols: int = 1, nrows: int = 1):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(nrows, ncols, figsize=(width, height), squeeze=False)


def plot_recall_by_segment(report: EvalReport) -> bytes:
    """Grouped bars: Recall@10 per segment, one bar per system; the legend sits beside the axes,
    so it covers no bar."""
    figure, axes = _figure(11, 4)
    axis = axes[0, 0]
    width = 0.8 / max(len(report.systems), 1)
    colours = _colours(len(report.systems))
    for position, result in enumerate(report.systems):
        values = [result.metrics.get(f"recall@10_{segment}", 0.0) for segment in SEGMENT_ORDER]
        axis.bar([index + position * width for index in range(len(SEGMENT_ORDER))], values, width, label=result.name,
                 color=colours[position])
    axis.set_xticks([index + 0.4 - width / 2 for index in range(len(SEGMENT_ORDER))], SEGMENT_ORDER)
    axis.set_ylabel("Recall@10")
    axis.set_ylim(0, 1)
    axis.set_title("Recall@10 by segment of the relevant item")
    axis.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _png(figure)


def plot_sid_length_by_segment(report: EvalReport) -> bytes:
    """Bars: mean SID length per segment, one bar per SID variant."""
    figure, axes = _figure(7, 3.5)
    axis = axes[0, 0]
    variants = list(report.sid_segments)
    width = 0.8 / max(len(variants), 1)
    for position, variant in enumerate(variants):
        by_segment = {row["segment"]: row["mean_length"] for row in report.sid_segments[variant]}
        axis.bar([index + position * width for index in range(len(SEGMENT_ORDER))],
                 [by_segment.get(segment, 0.0) for segment in SEGMENT_ORDER], width, label=variant)
    axis.set_xticks([index + 0.4 - width / 2 for index in range(len(SEGMENT_ORDER))], SEGMENT_ORDER)
    axis.set_ylabel("mean SID length (tokens)")
    axis.set_title("SID length by segment")
    axis.legend(fontsize="small")
    return _png(figure)


def plot_training_curves(curves: Curves) -> bytes:
    """One column per training stage: its losses on the top row, its validation metrics (another
    scale) on the bottom row; every series its own colour, legends below the panels."""
    stages = [stage for stage, metrics in curves.items() if metrics]
    figure, axes = _figure(5 * len(stages), 7, ncols=len(stages), nrows=2)
    for column, stage in enumerate(stages):
        rows = {"loss": sorted(name for name in curves[stage] if "loss" in name),
                "validation": sorted(name for name in curves[stage] if "loss" not in name)}
        for row, (kind, names) in enumerate(rows.items()):
            axis = axes[row, column]
            colours = _colours(len(names))
            for colour, metric in zip(colours, names):
                steps, values = zip(*curves[stage][metric])
                axis.plot(steps, values, label=metric, color=colour, marker="." if len(steps) < 30 else None)
            axis.set_title(f"{stage}: {kind}")
            axis.set_xlabel("step" if stage != "sci_towers" else "epoch")
            if names:
                axis.legend(fontsize="x-small", loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2)
            else:
                axis.text(0.5, 0.5, f"no {kind} curve recorded", ha="center", va="center", transform=axis.transAxes)
                axis.set_axis_off()
    figure.tight_layout()
    return _png(figure)


def _colours(n: int) -> list:
    import matplotlib

    palette = matplotlib.colormaps["tab10" if n <= 10 else "tab20"]
    return [palette(index % palette.N) for index in range(n)]


def plots(report: EvalReport) -> dict[str, bytes]:
    figures = {"recall_by_segment": plot_recall_by_segment(report)}
    if report.sid_segments:
        figures["sid_length_by_segment"] = plot_sid_length_by_segment(report)
    if any(report.curves.values()):
        figures["training_curves"] = plot_training_curves(report.curves)
    return figures


def write_report(report: EvalReport, folder: str | Path) -> dict[str, Path]:
    """Write report.md, report.html, metrics.json and plots/ into `folder`; returns the paths."""
    folder = Path(folder)
    (folder / "plots").mkdir(parents=True, exist_ok=True)
    pngs = plots(report)
    plot_files = {}
    for name, png in pngs.items():
        (folder / "plots" / f"{name}.png").write_bytes(png)
        plot_files[name] = f"plots/{name}.png"
    paths = {"report.md": folder / "report.md", "report.html": folder / "report.html",
             "metrics.json": folder / "metrics.json"}
    paths["report.md"].write_text(render_markdown(report, plot_files))
    paths["report.html"].write_text(render_html(report, pngs))
    paths["metrics.json"].write_text(json.dumps(report.headline(), indent=2))
    return paths
