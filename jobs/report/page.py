"""`emoforge catalog report`: one self-contained HTML page (images embedded) about a catalog.

The funnel from input videos to the tracks `select` keeps (hours and counts, every loss with its
reason), counts by status and error, distributions, contact sheets of sample tracks, per-stage
time and throughput, the models used with their licenses (a banner when any is research-only or
non-commercial), and the same funnel for a second set of thresholds. The numbers are also
embedded as JSON (`<script type="application/json" id="report-data">`) for machines and tests.
"""

from __future__ import annotations

import base64
import datetime
import html
import json
import logging
import tempfile
import time
from pathlib import Path

from catalog import fs
from catalog.select import Thresholds
from jobs.report import data as report_data
from jobs.report import plots as report_plots
from jobs.report import sheets as report_sheets

log = logging.getLogger(__name__)

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d2733;background:#f6f7f9}
main{max-width:1240px;margin:0 auto;padding:16px 24px 48px}
h1{font-size:22px;margin:8px 0 2px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #d5dae1;padding-bottom:4px}
h3{font-size:15px;margin:16px 0 6px}.meta{color:#5b6675;font-size:12px}
table{border-collapse:collapse;background:#fff;margin:6px 0 10px;font-size:13px}
th,td{border:1px solid #dde2e8;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#eef1f5}td.num{text-align:right;font-variant-numeric:tabular-nums}
.banner{background:#fff4e5;border:1px solid #f0a030;border-left:6px solid #e67e00;padding:10px 14px;margin:12px 0;border-radius:4px}
.ok{color:#1e7d32}.bad{color:#b3261e}.grid{display:flex;flex-wrap:wrap;gap:10px}
.grid figure{margin:0;background:#fff;border:1px solid #dde2e8;padding:4px}
.sheet{display:flex;flex-wrap:wrap;gap:10px}.card{background:#fff;border:1px solid #dde2e8;padding:6px;width:372px;font-size:12px}
.card img{display:block;max-width:100%}.card .note{color:#b3261e;padding:18px 4px;background:#fafafa}
code{font-size:12px;background:#eef1f5;padding:0 3px;border-radius:3px}.lost td{color:#7a4b00}
"""


def write_report(root: str | Path, out: str | Path | None = None, compare: list[str] | None = None) -> Path | str:
    """Write the HTML report of the catalog at `root` to `out` (default `<root>/report.html`).

    compare: select thresholds as KEY=VALUE strings (TOML values; dotted keys for nested
    lip_sync_rules), shown as a second funnel. Returns the written path."""
    started = time.perf_counter()
    root = fs.resolve(root)  # a local folder or an s3:// prefix
    upload = out is None and not root.local  # a store catalog's report is uploaded next to it
    if out is None:
        out = root.local_path() if root.local else Path(tempfile.mkdtemp(prefix="emoforge-report-"))
        out = out / "report.html"
    out = Path(out)
    data = report_data.collect(root, compare)
    log.info("report: numbers for %d tracks in %.1f s", data["_tracks"].num_rows, time.perf_counter() - started)

    base = Thresholds.from_dict(data["thresholds"])
    plots = report_plots.distributions(data["_tracks"], data["_clips"], data["_keep"], base)
    funnel_png = report_plots.funnel_chart(data["funnel"], data.get("compare", {}).get("funnel"))
    sheets = report_sheets.contact_sheets(root, data["_tracks"], data["_keep"], data["_drop"],
                                         {"videos": data["_videos"], "clips": data["_clips"]})
    log.info("report: charts and contact sheets in %.1f s", time.perf_counter() - started)
    page = render(data, plots, funnel_png, sheets)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".tmp-{out.name}")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(out)
    if upload:
        root.put_file(out, "report.html", move=True)
        out = root.uri_of("report.html")
    log.info("report: wrote %s (%.1f MB) in %.1f s", out, len(page) / 1e6, time.perf_counter() - started)
    return out


# ---------------------------------------------------------------------------------------------
# HTML
# ---------------------------------------------------------------------------------------------
def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _count(n) -> str:
    return "" if n is None else f"{int(n):,}"


def _hours(h, unknown: str = "") -> str:
    return unknown if h is None else f"{h:,.3f}".replace("-0.000", "0.000")


def _img(png: bytes, alt: str, mime: str = "image/png") -> str:
    return f'<img alt="{_e(alt)}" src="data:{mime};base64,{base64.b64encode(png).decode()}">'


def _funnel_table(steps: list[dict], table_id: str) -> str:
    rows = [('<tr><th>step</th><th>count</th><th>hours</th><th>lost before this step</th>'
            '<th>count</th><th>hours</th></tr>')]
    for step in steps:
        lost = step["lost"] or [None]
        span = len(lost)
        for k, item in enumerate(lost):
            head = (f'<td rowspan="{span}">{_e(step["level"])}</td>'
                    f'<td class="num count" rowspan="{span}">{_count(step["count"])}</td>'
                    f'<td class="num hours" rowspan="{span}">{_hours(step["hours"])}</td>') if k == 0 else ""
            if item is None:
                tail = "<td></td><td></td><td></td>"
            else:
                tail = (f'<td>{_e(item["reason"])}</td><td class="num">{_count(item["count"])}</td>'
                        f'<td class="num">{_hours(item["hours"], "unknown")}</td>')
            attrs = f' data-level="{_e(step["level"])}"' if k == 0 else ' class="lost"'
            rows.append(f"<tr{attrs}>{head}{tail}</tr>")
    return f'<table id="{table_id}">' + "".join(rows) + "</table>"


def _compare_table(base: list[dict], other: list[dict]) -> str:
    rows = [('<tr><th>step</th><th>current count</th><th>compared count</th><th>change</th>'
            '<th>current hours</th><th>compared hours</th><th>change</th></tr>')]
    for a, b in zip(base, other):
        both = a["count"] is not None and b["count"] is not None
        dc = f'{b["count"] - a["count"]:+,}' if both else ""
        dh = f'{b["hours"] - a["hours"]:+,.3f}' if both else ""
        rows.append(f'<tr data-level="{_e(a["level"])}"><td>{_e(a["level"])}</td>'
                    f'<td class="num">{_count(a["count"])}</td><td class="num">{_count(b["count"])}</td>'
                    f'<td class="num">{dc}</td><td class="num">{_hours(a["hours"])}</td>'
                    f'<td class="num">{_hours(b["hours"])}</td><td class="num">{dh}</td></tr>')
    return '<table id="compare">' + "".join(rows) + "</table>"


def _status_tables(statuses: list[dict]) -> str:
    names = ["ok", "skipped", "failed", "not run"]
    rows = ["<tr><th>table</th><th>stage</th>" + "".join(f"<th>{n}</th>" for n in names) +
            "<th>errors (normalized: numbers as #, paths as &lt;path&gt;), count, example</th></tr>"]
    for s in statuses:
        errors = "".join(f"<div><b>{_count(n)}</b> &times; {_e(reason)}"
                         f"<br><span class=meta>e.g. {_e(example[:200])}</span></div>"
                         for reason, n, example in s["errors"])
        rows.append(f'<tr data-stage="{_e(s["table"])}.{_e(s["stage"])}"><td>{_e(s["table"])}</td>'
                    f'<td>{_e(s["stage"])}</td>' +
                    "".join(f'<td class="num">{_count(s["counts"].get(n, 0))}</td>' for n in names) +
                    f"<td>{errors}</td></tr>")
    return '<table id="statuses">' + "".join(rows) + "</table>"


def _timings_table(timings: list[dict]) -> str:
    if not timings:
        return "<p>No timings recorded in this catalog.</p>"
    rows = [("<tr><th>stage</th><th>rows</th><th>seconds</th><th>rows/s</th>"
            "<th>media s per wall s</th><th>source</th></tr>")]
    for t in timings:
        rate = "" if t["rows_per_s"] is None else f"{t['rows_per_s']:,.2f}"
        real = "" if t["realtime"] is None else f"{t['realtime']:,.2f}"
        rows.append(f'<tr data-stage="{_e(t["stage"])}"><td>{_e(t["stage"])}</td><td class="num">{_count(t["rows"])}</td>'
                    f'<td class="num">{t["seconds"]:,.1f}</td><td class="num">{rate}</td>'
                    f'<td class="num">{real}</td><td><code>{_e(t["source"])}</code></td></tr>')
    return '<table id="timings">' + "".join(rows) + "</table>"


def _models_table(models: list[dict]) -> str:
    if not models:
        return "<p>The manifest lists no models.</p>"
    rows = ["<tr><th>stages</th><th>model</th><th>version</th><th>license</th><th>commercial use</th></tr>"]
    for m in models:
        flag = '<span class="ok">yes</span>' if m["commercial_ok"] else '<span class="bad">no</span>'
        rows.append(f'<tr><td>{_e(m["stage"])}</td><td>{_e(m["key"])}</td><td>{_e(m["version"])}</td>'
                    f'<td>{_e(m["license"])}</td><td>{flag}</td></tr>')
    return '<table id="models">' + "".join(rows) + "</table>"


def _sheet(sheet: report_sheets.Sheet) -> str:
    cards = []
    for s in sheet.samples:
        body = _img(s.jpeg, f"frames of track {s.track_id}", "image/jpeg") if s.jpeg else \
            f'<div class="note">{_e(s.note)}</div>'
        caption = "<br>".join(_e(line) for line in s.caption)
        cards.append(f'<div class="card" data-track="{_e(s.track_id)}">{body}<div>{caption}</div></div>')
    inner = "".join(cards) if cards else "<p>No tracks to show.</p>"
    return f"<h3>{_e(sheet.title)}</h3><p class=meta>{_e(sheet.explanation)}</p><div class=sheet>{inner}</div>"


def _refusal(message: str, element_id: str) -> str:
    return (f'<div class="banner" id="{element_id}"><b>select refused this catalog:</b> {_e(message)}. '
            "Nothing is counted as kept; fix the thresholds (e.g. <code>--compare "
            "'lip_sync_rules.BACKEND={min_confidence=..., max_abs_offset_frames=...}'</code>) "
            "or the catalog.</div>")


def _thresholds(values: dict) -> str:
    return "<code>" + _e(json.dumps(values, sort_keys=True)) + "</code>"


def public_data(data: dict) -> dict:
    """The report's numbers without the internal arrays (what the JSON block carries)."""
    return {k: v for k, v in data.items() if not k.startswith("_")}


def render(data: dict, plots: list[tuple[str, bytes]], funnel_png: bytes,
           sheets: list[report_sheets.Sheet]) -> str:
    """The full HTML page."""
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    parts = [(f"<h1>Curation report</h1><div class=meta>catalog <code>{_e(data['catalog'])}</code>, "
             f"version <code>{_e(data['version'])}</code>, schema {_e(data['schema_version'])}, "
             f"code {_e(data['code_version'])}; written {now}</div>")]
    if data["restricted_models"]:
        parts.append('<div class="banner" id="license-banner"><b>License warning:</b> this catalog was '
                     "made with research-only or non-commercial models: "
                     + ", ".join(f"<code>{_e(k)}</code>" for k in data["restricted_models"])
                     + ". Its derived columns inherit those terms; use a <code>--commercial-only</code> "
                     "run for commercial training.</div>")
    kept = data["funnel"][-1]
    parts.append(f"<h2>Funnel</h2><p>Thresholds: {_thresholds(data['thresholds'])}</p>")
    if data.get("select_error"):
        parts.append(_refusal(data["select_error"], "select-error"))
    else:
        parts.append(f"<p><b>{_count(kept['count'])}</b> tracks, <b>{_hours(kept['hours'])}</b> hours "
                     f"kept from {_count(data['funnel'][0]['count'])} input videos "
                     f"({_hours(data['funnel'][0]['hours'])} hours).</p>")
    parts.append(_funnel_table(data["funnel"], "funnel"))
    parts.append(_img(funnel_png, "funnel chart"))
    if "compare" in data:
        c = data["compare"]
        parts.append("<h2>What the compared thresholds would keep</h2><p>Overrides: "
                     + ", ".join(f"<code>{_e(o)}</code>" for o in c["overrides"])
                     + f"</p><p>Thresholds: {_thresholds(c['thresholds'])}</p>")
        if c.get("select_error"):
            parts.append(_refusal(c["select_error"], "compare-select-error"))
        parts.append(_compare_table(data["funnel"], c["funnel"]))
        parts.append(_funnel_table(c["funnel"], "funnel-compare"))
    parts.append("<h2>Counts by status and error</h2>" + _status_tables(data["statuses"]))
    parts.append("<h2>Distributions</h2><div class=grid>" + "".join(
        f"<figure>{_img(png, title)}</figure>" for title, png in plots) + "</div>")
    parts.append("<h2>Contact sheets</h2>" + "".join(_sheet(s) for s in sheets))
    parts.append("<h2>Time and throughput per stage</h2>" + _timings_table(data["timings"]))
    parts.append("<h2>Models and licenses</h2>" + _models_table(data["models"]))
    blob = json.dumps(public_data(data), default=str).replace("</", "<\\/")
    return ("<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
            "<meta name=viewport content='width=device-width, initial-scale=1'>"
            f"<title>emoforge report: {_e(Path(data['catalog']).name)}</title><style>{CSS}</style></head>"
            "<body><main>" + "".join(parts) + "</main>"
            f'<script type="application/json" id="report-data">{blob}</script></body></html>')
