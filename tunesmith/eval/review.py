"""Human review: a sample of the eval's rows for people to score, blind, and the filled sheet folded back in.

    tunesmith eval --compare base=... tuned=... --dataset d.jsonl --review-sample 30 --output-dir runs/eval-x
    # fill score_A, score_B, ... (1-10) and notes in runs/eval-x/review.csv (or in review.html, then "Download CSV")
    tunesmith eval --review-results runs/eval-x/review.csv
    tunesmith eval --review-results ~/Downloads/review.csv --output-dir runs/eval-x     # saved by review.html

The sheet names answers by letter only; which model is behind each letter is shuffled per row (seeded by
--review-seed) and kept in review_key.json beside it, which reviewers should not open. review.csv is UTF-8 with a
BOM (spreadsheet programs then show Chinese right); ',' ';' or tab separated sheets are read back.
"""

from __future__ import annotations

import csv
import html
import io
import json
import logging
import random
import string
from pathlib import Path
from typing import Any

from tunesmith.errors import ConfigError
from tunesmith.eval.judge import question

log = logging.getLogger("tunesmith")
KEY = "review_key.json"


def write_review(samples: list[Any], answers: dict[str, list[str]], out: Path, count: int, seed: int) -> Path:
    """review.csv, review.html and review_key.json in out; returns the CSV's path."""
    rows = [i for i, s in enumerate(samples) if not s.is_choice]
    rng = random.Random(seed)
    picked = sorted(rng.sample(rows, min(count, len(rows))))
    if len(picked) < count:
        log.warning("review: %d rows asked for, the data has %d generation rows: all of them", count, len(rows))
    names = list(answers)
    letters = list(string.ascii_uppercase[:len(names)])
    sheet, key = [], {}
    for n, i in enumerate(picked, 1):
        order = names[:]
        rng.shuffle(order)
        row_id = f"r{n:03d}"
        key[row_id] = {"row": i, "source": samples[i].where, **dict(zip(letters, order))}
        sheet.append({"id": row_id, "prompt": question(samples[i].messages), "reference": samples[i].reference or "",
                      **{f"answer_{L}": answers[m][i] for L, m in zip(letters, order)},
                      **{f"score_{L}": "" for L in letters}, "notes": ""})
    fields = ["id", "prompt", "reference", *(f"answer_{L}" for L in letters), *(f"score_{L}" for L in letters), "notes"]
    path = out / "review.csv"
    with path.open("w", encoding="utf-8-sig", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(sheet)
    (out / KEY).write_text(json.dumps({"models": names, "letters": letters, "seed": seed, "rows": key}, indent=1,
                                      ensure_ascii=False) + "\n", encoding="utf-8")
    (out / "review.html").write_text(_page(sheet, letters, fields), encoding="utf-8")
    log.info("review: %d rows in %s and review.html (answers by letter, shuffled per row; the key is %s); fill "
             "score_%s (1-10) and notes, then: tunesmith eval --review-results %s", len(sheet), path, KEY,
             "/".join(letters), path)
    return path


def _page(sheet: list[dict[str, str]], letters: list[str], fields: list[str]) -> str:
    """The sheet as a page: answers side by side, a score box and notes per row, and a button that saves the filled
    page as the same CSV."""
    e = html.escape
    head = "".join(f"<th>{e(L)}</th>" for L in letters)
    body = []
    for row in sheet:
        cells = "".join(f'<td><div class="a">{e(row[f"answer_{L}"])}</div>'
                        f'<label>score <input type="number" min="1" max="10" step="1" data-field="score_{L}"></label></td>'
                        for L in letters)
        body.append(f'<tr data-id="{e(row["id"])}"><td class="id">{e(row["id"])}</td><td><div class="a">'
                    f'{e(row["prompt"])}</div><details><summary>reference</summary><div class="a">{e(row["reference"])}'
                    f'</div></details></td>{cells}<td><textarea data-field="notes"></textarea></td></tr>')
    data = json.dumps(sheet, ensure_ascii=False).replace("</", "<\\/")
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>tunesmith review</title><style>
body{{font-family:sans-serif;margin:1em}} table{{border-collapse:collapse;width:100%}}
td,th{{border:1px solid #ccc;vertical-align:top;padding:6px}} .a{{white-space:pre-wrap;max-height:24em;overflow:auto}}
.id{{font-family:monospace}} textarea{{width:12em;height:6em}} input{{width:4em}}</style></head><body>
<h1>Blind review: {len(sheet)} rows</h1><p>The answers of each row come from different models under letters shuffled
per row. Score each answer 1-10, add notes, then <button id="save">Download CSV</button> and give the file to
<code>tunesmith eval --review-results review.csv</code> (in the eval's folder, beside {KEY}).</p>
<table><tr><th>id</th><th>prompt</th>{head}<th>notes</th></tr>{''.join(body)}</table>
<script>
const sheet = {data}; const fields = {json.dumps(fields)};
const q = v => '"' + String(v).replaceAll('"', '""') + '"';
document.getElementById('save').onclick = () => {{
  const rows = sheet.map(r => {{
    const tr = document.querySelector(`tr[data-id="${{r.id}}"]`);
    tr.querySelectorAll('[data-field]').forEach(el => r[el.dataset.field] = el.value);
    return fields.map(f => q(r[f] ?? '')).join(',');
  }});
  const blob = new Blob(['\\ufeff' + [fields.join(','), ...rows].join('\\r\\n') + '\\r\\n'], {{type: 'text/csv'}});
  const a = document.createElement('a'); a.href = URL.createObjectURL(blob); a.download = 'review.csv'; a.click();
}};
</script></body></html>
"""


# -----------------------------------------------------------------------------
# Folding a filled sheet back in


def read_review(path: Path, folder: Path | None = None) -> dict[str, Any]:
    """Mean score per model from a filled sheet and its key: {model: {"mean": 1-10 or None, "scored": n}}."""
    key_path = (folder or path.parent) / KEY
    if not path.is_file():
        raise ConfigError(f"review_results: {path} is not a file")
    if not key_path.is_file():
        raise ConfigError(f"review_results: no {KEY} in {key_path.parent}; keep the sheet in the eval folder that "
                          "wrote it, or pass that folder as --output-dir")
    key = json.loads(key_path.read_text(encoding="utf-8"))
    text = path.read_text(encoding="utf-8-sig")
    try:  # the separator only: sniffed from the header, whose lack of quotes would turn off "" escapes
        delimiter = csv.Sniffer().sniff(text.splitlines()[0], delimiters=",;\t").delimiter
    except (csv.Error, IndexError):
        delimiter = ","
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)  # answers may hold line breaks
    scores: dict[str, list[float]] = {m: [] for m in key["models"]}
    notes = 0
    for row in reader:
        where = f"{path}:{reader.line_num}"
        if row.get("id") not in key["rows"]:
            raise ConfigError(f"{where}: id: {row.get('id')!r} is not a row of this review ({KEY} has "
                              f"{', '.join(list(key['rows'])[:3])}...)")
        for letter in key["letters"]:
            value = (row.get(f"score_{letter}") or "").strip()
            if not value:
                continue
            try:
                number = float(value.replace(",", "."))
            except ValueError:
                number = -1.0
            if not 1 <= number <= 10:
                raise ConfigError(f"{where}: score_{letter}: {value!r} is not a number from 1 to 10")
            scores[key["rows"][row["id"]][letter]].append(number)
        notes += bool((row.get("notes") or "").strip())
    result = {m: {"mean": sum(v) / len(v) if v else None, "scored": len(v)} for m, v in scores.items()}
    if not any(v for v in scores.values()):
        raise ConfigError(f"review_results: {path} has no scores yet; fill score_{'/'.join(key['letters'])} (1-10)")
    return {"models": result, "rows": len(key["rows"]), "with_notes": notes, "sheet": str(path)}


def fold_review(cfg: Any) -> Any:
    """`tunesmith eval --review-results FILE`: the human column in that eval's results.json, table and chart."""
    from tunesmith.eval import report
    from tunesmith.eval.run import COLUMN_ORDER, EvalResult

    path = Path(cfg.review_results)
    out = Path(cfg.output_dir) if cfg.output_dir else path.parent  # a sheet saved elsewhere (a browser's downloads)
    review = read_review(path, out)
    if not (out / "results.json").is_file():
        raise ConfigError(f"review_results: no results.json in {out}; the sheet belongs in the eval folder that wrote it")
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    for name, r in review["models"].items():
        if name in results["models"] and r["mean"] is not None:
            results["models"][name]["scores"]["human"] = r["mean"] / 10
    present = {c for m in results["models"].values() for c in m["scores"]}
    results["columns"] = [c for c in COLUMN_ORDER if c in present]
    results["review"] = review
    results.setdefault("how", {})["human"] = "mean reviewer score (1-10) / 10, blind (letters shuffled per row)"
    report.write_results(out / "results.json", results)
    chart = report.plot_scores(out / "scores.png", results)
    report.print_table(results)
    for name, r in review["models"].items():
        log.info("review: %s scored %s by reviewers over %d answers", name,
                 "-" if r["mean"] is None else f"{r['mean']:.2f}/10", r["scored"])
    scores = {name: m["scores"] for name, m in results["models"].items()}
    return EvalResult(out, scores, out / "results.json", out / "answers.jsonl", chart)
