"""Human review: --review-sample writes a blind sheet (CSV + HTML, letters shuffled per row, the key apart), a
reviewer fills it without the key, and --review-results folds the scores back into that eval's table per model."""

import csv
import io
import json
import shutil

import pytest

from tunesmith import api
from tunesmith.config import load
from tunesmith.config.eval import EvalConfig
from tunesmith.errors import ConfigError

WORDS = ["apple", "river", "stone", "cloud", "maple", "tiger", "amber", "frost", "lemon", "orbit", "pearl", "quartz"]


@pytest.fixture(scope="module")
def reviewed(answering, tmp_path_factory):
    """An eval of `right` vs `wrong` on 40 rows (and one multiple-choice row, never sampled) with a 30-row sheet."""
    root = tmp_path_factory.mktemp("review")
    data = root / "codes.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"code for {w}{n}"},
                          {"role": "assistant", "content": f"CODE {w}{n} OK"}]} for n in range(4) for w in WORDS[:10]]
    rows.append({"question": "2 + 2 =", "choices": ["3", "4"], "answer": "B"})
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = root / "eval"
    api.evaluate(load(EvalConfig, ["--compare", f"right={answering}#right", f"wrong={answering}#wrong", "--dataset",
                                   str(data), "--review-sample", "30", "--output-dir", str(out)]))
    return out


def read_sheet(path):
    text = path.read_text(encoding="utf-8-sig")
    delimiter = ";" if text.startswith("id;") else ","  # the filled sheet below is ;-separated
    return list(csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter))


def test_the_sheet_is_blind_and_shuffled_per_row(reviewed):
    sheet = read_sheet(reviewed / "review.csv")
    assert len(sheet) == 30 and list(sheet[0]) == ["id", "prompt", "reference", "answer_A", "answer_B", "score_A",
                                                   "score_B", "notes"]
    assert all(r["prompt"].startswith("code for ") and r["score_A"] == r["score_B"] == r["notes"] == "" for r in sheet)
    key = json.loads((reviewed / "review_key.json").read_text())
    right_first = sum(key["rows"][r["id"]]["A"] == "right" for r in sheet)
    assert 5 < right_first < 25  # the order is shuffled per row, not one model always A
    for r in sheet:  # the key says which model wrote each letter's answer
        for letter in "AB":
            model = key["rows"][r["id"]][letter]
            assert (r[f"answer_{letter}"] == r["reference"]) == (model == "right")
    page = (reviewed / "review.html").read_text()
    assert "right" not in page and "wrong" not in page  # no model names on the page
    assert page.count('data-field="score_A"') == 30 and sheet[0]["answer_A"] in page
    # the same seed draws the same sheet
    assert [r["id"] for r in sheet] == [f"r{n:03d}" for n in range(1, 31)]


def test_a_filled_sheet_folds_into_the_table_per_model(reviewed, capsys):
    sheet = read_sheet(reviewed / "review.csv")
    for r in sheet[:20]:  # a reviewer who likes answers equal to the reference, and skips the last 10 rows
        for letter in "AB":
            r[f"score_{letter}"] = "9" if r[f"answer_{letter}"] == r["reference"] else "2"
        r["notes"] = 'checked; "fine", mostly\nsecond line'
    filled = reviewed / "review.csv"
    with filled.open("w", encoding="utf-8-sig", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(sheet[0]), delimiter=";")  # a spreadsheet's own separator
        writer.writeheader()
        writer.writerows(sheet)
    result = api.evaluate(load(EvalConfig, ["--review-results", str(filled)]))
    assert result.scores["right"]["human"] == pytest.approx(0.9) and result.scores["wrong"]["human"] == pytest.approx(0.2)
    results = json.loads((reviewed / "results.json").read_text())
    assert results["columns"][-1] == "human" and results["review"]["models"]["right"] == {"mean": 9.0, "scored": 20}
    assert results["review"]["with_notes"] == 20 and "exact_match" in results["models"]["right"]["scores"]
    assert "human" in capsys.readouterr().out  # the table, reprinted


def test_a_bad_score_names_file_line_and_column(reviewed, tmp_path):
    sheet = read_sheet(reviewed / "review.csv")
    sheet[2]["score_B"] = "11"
    bad = reviewed / "bad.csv"
    with bad.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(sheet[0]))
        writer.writeheader()
        writer.writerows(sheet)
    with pytest.raises(ConfigError, match=rf"{bad}:\d+: score_B: '11' is not a number from 1 to 10"):
        api.evaluate(load(EvalConfig, ["--review-results", str(bad)]))
    lonely = tmp_path / "review.csv"
    lonely.write_text("id,score_A\n")
    with pytest.raises(ConfigError, match="no review_key.json in .*; keep the sheet in the eval folder"):
        api.evaluate(load(EvalConfig, ["--review-results", str(lonely)]))
    with pytest.raises(ConfigError, match="review_results: folds a filled sheet .* give it alone"):
        load(EvalConfig, ["--review-results", str(bad), "--dataset", "x.jsonl"])


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)")
def test_the_page_fills_and_saves_the_same_sheet(reviewed, tmp_path):
    """review.html in a real browser: scores typed into the page, Download CSV, and that file folds in like the sheet."""
    playwright = pytest.importorskip("playwright.sync_api", reason="needs playwright (pip install playwright)")
    folder = tmp_path / "page"
    shutil.copytree(reviewed, folder)  # the sheet, its key and the eval's results.json
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page()
        page.goto((folder / "review.html").as_uri())
        for row in page.query_selector_all("tr[data-id]"):
            answers = [a.inner_text() for a in row.query_selector_all("td:has(input) > div.a")]
            reference = row.query_selector("details div.a").text_content()  # folded away: no inner text
            for letter, answer in zip("AB", answers):
                row.query_selector(f'input[data-field="score_{letter}"]').fill("8" if answer == reference else "3")
            row.query_selector("textarea").fill('a "quoted", note\nover two lines')
        with page.expect_download() as download:
            page.click("#save")
        download.value.save_as(tmp_path / "downloads" / "review.csv")  # where a browser saves it
        browser.close()
    sheet = read_sheet(tmp_path / "downloads" / "review.csv")
    assert len(sheet) == 30 and sheet[0]["notes"] == 'a "quoted", note\nover two lines'
    result = api.evaluate(load(EvalConfig, ["--review-results", str(tmp_path / "downloads" / "review.csv"),
                                            "--output-dir", str(folder)]))
    assert result.scores["right"]["human"] == pytest.approx(0.8) and result.scores["wrong"]["human"] == pytest.approx(0.3)
