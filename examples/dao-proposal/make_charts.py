"""The DAO drafter's chart step: synthetic NFT-sales charts with a known trend, and the proposal that follows.

    python examples/dao-proposal/make_charts.py                      # charts/train.jsonl + charts/heldout.jsonl
    python examples/dao-proposal/make_charts.py --score ANSWERS.jsonl # trend named correctly, per trend

Each chart is 30 days of daily secondary sales of a fictional NFT collection, in ETH, drawn with matplotlib (224x168
pixels, 32 colours) from a series with one of four trends:
  rising   volume grows 60-200% over the month          -> route 1% of royalties to the community treasury
  falling  volume shrinks 45-80%                          -> a capped 30-day holder incentive, treasury sales paused
  flat     the month ends within 10% of where it began    -> no parameter change, review next quarter
  spike    a flat month with one day at 4-8x the median   -> no change until a wash-trading review of that day
Noise is a few percent per day, so the trend is what the eye sees, and the figures in the answer are read from the
series the chart shows (first and last week's mean, the spike's day and size). Rows are the peers' image format: a
user turn with an <image> placeholder, an `images` column (paths relative to the JSONL file), the answer, and a
`trend` column that --score reads. Same seed, same bytes (PNG metadata without the matplotlib version).

The held-out charts use collections and seeds the training charts never use.

    python examples/dao-proposal/make_charts.py --bold --train 600  # charts/bold/: the same series, for a small eye

--bold draws each series as one thick black line on white, 64x64 pixels, no title, axes or labels (the name is in the
question), and the answer is the trend and the proposal's title only (the figures need a finer eye): what a vision
tower trained from scratch on a CPU can learn (build_vlm.py, README). The first 200 training and all 40 held-out
series are the ones charts/ shows; --train beyond 200 draws more from the same seed.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "charts"
SEED = 20251204
TRENDS = ("rising", "falling", "flat", "spike")
DAYS = 30
BOLD_PIXELS = 64
QUESTION = ("This chart shows the daily secondary sales of {name} over the last 30 days. Name the trend and draft "
            "the governance proposal that follows from it.")
TREND_LINE = re.compile(r"Trend:\s*(rising|falling|flat|spike)\b", re.IGNORECASE)

ADJECTIVES = ["Amber", "Basalt", "Cinder", "Drift", "Echo", "Fable", "Gilded", "Harbor", "Indigo", "Juniper", "Kestrel",
              "Lumen", "Meadow", "Nimbus", "Onyx", "Prism", "Quill", "Rune", "Saffron", "Tidal"]
NOUNS = ["Foxes", "Lanterns", "Golems", "Moths", "Keys", "Comets", "Totems", "Herons", "Masks", "Sprites", "Orbs",
         "Whales"]
HELD_OUT_ADJECTIVES = ["Vesper", "Willow", "Zephyr", "Obsidian"]  # collections no training chart shows


def series(trend: str, rng: random.Random) -> tuple[list[float], dict]:
    """30 daily volumes with the trend, and the facts the answer states."""
    base = rng.uniform(20, 200)
    noise = lambda: 1 + rng.gauss(0, 0.04)  # a few percent per day
    facts: dict = {}
    if trend == "rising":
        end = base * rng.uniform(1.6, 3.0)
        values = [(base + (end - base) * d / (DAYS - 1)) * noise() for d in range(DAYS)]
    elif trend == "falling":
        end = base * rng.uniform(0.2, 0.55)
        values = [(base + (end - base) * d / (DAYS - 1)) * noise() for d in range(DAYS)]
    else:
        end = base * rng.uniform(0.92, 1.08)
        values = [(base + (end - base) * d / (DAYS - 1)) * noise() for d in range(DAYS)]
        if trend == "spike":
            day = rng.randint(7, 21)  # days 8-22: neither the first nor the last week the answer averages
            values[day] = base * rng.uniform(4, 8)
            facts["spike_day"] = day + 1
            facts["spike_eth"] = values[day]
    values = [round(v, 1) for v in values]
    facts["first_week"] = sum(values[:7]) / 7
    facts["last_week"] = sum(values[-7:]) / 7
    facts["median"] = sorted(values)[DAYS // 2]
    return values, facts


def answer(trend: str, name: str, facts: dict, short: bool = False) -> str:
    first, last = facts["first_week"], facts["last_week"]
    change = (last - first) / first * 100
    moved = f"from {first:.1f} ETH a day in the first week to {last:.1f} ETH in the last ({change:+.0f}%)"
    if trend == "rising":
        head = f"Trend: rising. Daily sales of {name} went {moved}."
        title = f"Route 1% of {name} royalties to the community treasury"
        body = ("Demand is growing; a share of the higher royalty income builds reserves for quieter months. "
                "The split is reviewed after 90 days.")
    elif trend == "falling":
        head = f"Trend: falling. Daily sales of {name} went {moved}."
        title = f"A 30-day holder incentive for {name}, treasury sales paused"
        body = ("Demand is shrinking; the treasury pauses its own sales and funds a holder incentive capped at "
                f"{max(5, round(last * 2)):.0f} ETH, reviewed when the month ends.")
    elif trend == "flat":
        head = f"Trend: flat. Daily sales of {name} went {moved}."
        title = f"Keep the {name} parameters unchanged this quarter"
        body = "Demand is steady; no royalty or treasury change is proposed. The data is reviewed next quarter."
    else:
        head = (f"Trend: spike. Daily sales of {name} held near {facts['median']:.1f} ETH, except day "
                f"{facts['spike_day']} at {facts['spike_eth']:.1f} ETH.")
        title = f"Review day {facts['spike_day']} of {name} sales before any parameter change"
        body = ("One day's volume is several times the usual; before acting on it, a wash-trading review of that "
                "day's transactions is commissioned, and parameters stay as they are until it reports.")
    if short:  # --bold: the trend and the proposal it leads to, without the figures
        return f"Trend: {trend}.\n\n## Title\n{title}"
    return (f"{head}\n\n## Title\n{title}\n\n## Background\n{body}\n\n## Vote options\n- For\n- Against\n"
            "- Abstain")


def draw(values: list[float], name: str, path: Path, style: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(3.2, 2.4), dpi=70)
    days = list(range(1, DAYS + 1))
    if style == "bar":
        ax.bar(days, values, color="#3b6ea8", width=0.8)
    else:
        ax.plot(days, values, color="#c0392b", linewidth=2)
    ax.set_title(name, fontsize=9)
    ax.set_xlabel("day", fontsize=7)
    ax.set_ylabel("ETH", fontsize=7)
    ax.set_ylim(0, max(values) * 1.1)
    ax.tick_params(labelsize=6)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    plt.close(fig)
    from PIL import Image

    # 32 colours are plenty for a two-colour chart and keep each file near 3 KB (the recipe ships its charts)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.open(buffer).convert("RGB").quantize(colors=32).save(path, optimize=True)


def draw_bold(values: list[float], path: Path) -> None:
    """One thick line, 64x64 pixels, nothing else: the trend is the line's shape (a spike: one tall peak)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(1, 1), dpi=BOLD_PIXELS)
    ax = fig.add_axes((0.04, 0.04, 0.92, 0.92))
    ax.plot(range(DAYS), values, color="black", linewidth=2.5, solid_capstyle="round")
    ax.set_xlim(0, DAYS - 1)
    ax.set_ylim(0, max(values) * 1.1)
    ax.axis("off")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    plt.close(fig)
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.open(buffer).convert("L").save(path, optimize=True)


def make(split: str, count: int, seed: int, out: Path, bold: bool = False) -> list[dict]:
    rng = random.Random(seed)
    adjectives = HELD_OUT_ADJECTIVES if split == "heldout" else ADJECTIVES
    rows = []
    for i in range(count):
        trend = TRENDS[i % len(TRENDS)]  # balanced
        name = f"{rng.choice(adjectives)} {rng.choice(NOUNS)}"
        values, facts = series(trend, rng)
        image = f"{split}/{i:04d}.png"
        style = rng.choice(("bar", "line"))  # drawn either way, so --bold keeps the series of charts/
        if bold:
            draw_bold(values, out / image)
        else:
            draw(values, name, out / image, style)
        rows.append({"messages": [{"role": "user", "content": "<image>" + QUESTION.format(name=name)},
                                  {"role": "assistant", "content": answer(trend, name, facts, short=bold)}],
                     "images": [image], "trend": trend})
    (out / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return rows


def named_trend(text: str) -> str | None:
    found = TREND_LINE.search(text or "")
    return found.group(1).lower() if found else None


def score(answers: Path, rows: Path) -> dict:
    """Share of answers that name the chart's trend, overall and per trend (answers.jsonl of tunesmith infer or
    tunesmith eval, in the order of `rows`)."""
    truth = [json.loads(line)["trend"] for line in rows.read_text().splitlines()]
    given = [json.loads(line) for line in answers.read_text().splitlines()]
    texts = [g.get("response", g.get("answer", "")) for g in given]
    if len(texts) != len(truth):
        raise SystemExit(f"{answers}: {len(texts)} answers for {len(truth)} charts in {rows}")
    hits = [named_trend(t) == want for t, want in zip(texts, truth)]
    per = {t: sum(h for h, w in zip(hits, truth) if w == t) / max(1, truth.count(t)) for t in TRENDS}
    return {"named_correctly": sum(hits) / len(hits), "per_trend": per, "charts": len(hits)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=OUT, help="folder for the PNGs and the two JSONL files")
    parser.add_argument("--train", type=int, default=200, help="training charts (balanced over the four trends)")
    parser.add_argument("--heldout", type=int, default=40, help="held-out charts")
    parser.add_argument("--bold", action="store_true", help="one thick line, 64x64 pixels, into charts/bold/")
    parser.add_argument("--score", type=Path, help="answers.jsonl to score against --rows (prints JSON)")
    parser.add_argument("--rows", type=Path, default=OUT / "heldout.jsonl", help="the charts --score answers")
    args = parser.parse_args()
    if args.score:
        print(json.dumps(score(args.score, args.rows), indent=2))
        return
    out = args.out / "bold" if args.bold and args.out == OUT else args.out
    make("train", args.train, SEED, out, bold=args.bold)
    make("heldout", args.heldout, SEED + 1, out, bold=args.bold)
    print(f"wrote {args.train} training and {args.heldout} held-out charts under {out}")


if __name__ == "__main__":
    main()
