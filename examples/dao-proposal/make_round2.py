"""Round 2 of the DAO drafter: a quarter of new proposals and their votes, turned into training data.

    python examples/dao-proposal/make_round2.py                       # the shipped synthetic quarter (fixed seed)
    python examples/dao-proposal/make_round2.py --votes my_votes.jsonl --out data/round2   # your own vote record

Writes into round2/ (or --out), the same bytes on every run:
  votes.jsonl     the vote record: one row per proposal put to a vote (the synthetic quarter; not written with --votes)
  accepted.jsonl  every accepted proposal as an SFT row: its drafting request -> the proposal text
  pairs.jsonl     DPO pairs: prompt = the drafting request, chosen = the accepted proposal for it, rejected = each
                  proposal for the same request that was voted down

A vote record row (what a Snapshot or Tally export holds, reduced to the fields used here):
  {"id": "LARK-101", "dao": "Larkspur Lend", "request": "<what the author asked the drafter for>",
   "proposal": "<the text put to the vote>", "outcome": "accepted" | "rejected",
   "votes": {"for": 1, "against": 2, "abstain": 3}, "objection": "<why delegates voted it down>" (rejected only)}
Proposals are paired by their `request`: a request with no accepted proposal gives no pair (nothing to prefer), one
with several accepted ones pairs against the last. In the synthetic quarter a voted-down first draft is revised and
passes; each first draft fails for one reason delegates give in practice (no verifiable data, malformed links, a
budget over the cap, a loaded tone, a ballot without a way to vote no). The DAOs keep round 1's contract addresses.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import make_dataset as r1  # the sibling script: round 1's DAOs, topics and rendering

SEED = 20250107
REQUESTS = 24  # drafting requests in the quarter
FAILED_FIRST = 18  # of them, requests whose first draft was voted down and then revised

# -----------------------------------------------------------------------------
# Why a first draft failed: each turns the proposal that passed into the one that did not


def no_sources(p: r1.Draft, r: random.Random) -> tuple[r1.Draft, str]:
    data = ["- Figures from the core team's internal dashboard", "- Numbers shared on the last community call",
            "- Treasury report (link to follow)"]
    return replace(p, data=data), "no on-chain source for any figure; delegates could not check the numbers"


def malformed_links(p: r1.Draft, r: random.Random) -> tuple[r1.Draft, str]:
    # one hex digit lost from every hash and address: links that open nothing
    cut = [re.sub(r"0x([0-9a-f]{40}|[0-9a-f]{64})\b", lambda m: m.group(0)[:-1], line) for line in p.data]
    return replace(p, data=cut), "every cited transaction and address link was broken"


def over_cap(p: r1.Draft, r: random.Random) -> tuple[r1.Draft, str]:
    extra = max(p.cap // 2, 1_000)
    line = f"- Contingency: a further {r1.money(extra, p.unit)}, released by the authors without another vote"
    return (replace(p, budget=[*p.budget, line]),
            f"asked up to {r1.money(p.cap + extra, p.unit)} against a cap of {r1.money(p.cap, p.unit)}")


def loaded_tone(p: r1.Draft, r: random.Random) -> tuple[r1.Draft, str]:
    opener = r.choice(["This is a no-brainer.", "Everyone knows the current setup is a disaster.",
                       "Only the usual whales could possibly object to this."])
    closer = r.choice(["Voting against this would be absurd!!", "Anyone who disagrees has not read it!!"])
    return replace(p, background=f"{opener} {p.background} {closer}"), "a loaded tone that attacked critics"


def one_sided(p: r1.Draft, r: random.Random) -> tuple[r1.Draft, str]:
    ranked = any(v.startswith("Option") for v in p.votes)
    kept = ([v for v in p.votes if "Option C" not in v] if ranked else
            [v for v in p.votes if not v.startswith("Against")])
    return replace(p, votes=kept), "the ballot offered no way to keep things as they are"


OBJECTIONS = [no_sources, malformed_links, over_cap, loaded_tone, one_sided]

# -----------------------------------------------------------------------------
# The synthetic quarter: new requests for round 1's DAOs, votes on each draft


def tally(r: random.Random, passed: bool) -> dict[str, int]:
    turnout = r.randint(2_000_000, 40_000_000)
    share = r.uniform(0.6, 0.93) if passed else r.uniform(0.12, 0.45)
    abstain = int(turnout * r.uniform(0.0, 0.08))
    yes = int((turnout - abstain) * share)
    return {"for": yes, "against": turnout - abstain - yes, "abstain": abstain}


def quarter(r: random.Random, seen: set[str]) -> list[dict]:
    """The vote record of the quarter after round 1, in voting order (a failed draft comes before its revision)."""
    pairs = [(d, t) for d in r1.DAOS for t in r1.TOPICS if r1.fits(d, t)]
    numbers = {d.name: 100 for d in r1.DAOS}
    failing = set(r.sample(range(REQUESTS), FAILED_FIRST))
    record = []
    for i, (dao, topic) in enumerate(r.sample(pairs, REQUESTS)):
        passed = r1.compose(dao, topic, r)
        request = r.choice(r1.SFT_ASKS).format(dao=dao.name, req=passed.request, cap=r1.ask_money(passed.cap,
                                                                                                 passed.unit, r))
        assert request not in seen, request  # round 2 asks for new work
        drafts = []
        if i in failing:  # the objections in turn, so each is as common as the others
            failed, objection = OBJECTIONS[sum("objection" in v for v in record) % len(OBJECTIONS)](passed, r)
            drafts.append((failed, "rejected", objection))
        drafts.append((passed, "accepted", None))
        for draft, outcome, objection in drafts:
            numbers[dao.name] += 1
            row = {"id": f"{dao.token}-{numbers[dao.name]}", "dao": dao.name, "request": request,
                   "proposal": r1.render(draft), "outcome": outcome, "votes": tally(r, outcome == "accepted")}
            if objection:
                row["objection"] = objection
            record.append(row)
    return record


# -----------------------------------------------------------------------------
# Vote record -> training data (works on any record with the fields above)


def training_data(votes: list[dict]) -> tuple[list[dict], list[dict]]:
    """(accepted proposals as SFT rows, DPO pairs of accepted over rejected for the same request)."""
    accepted = [v for v in votes if v["outcome"] == "accepted"]
    sft = [{"messages": [{"role": "user", "content": v["request"]}, {"role": "assistant", "content": v["proposal"]}]}
           for v in accepted]
    passed = {v["request"]: v["proposal"] for v in accepted}  # the last accepted one wins
    pairs = [{"prompt": v["request"], "chosen": passed[v["request"]], "rejected": v["proposal"]}
             for v in votes if v["outcome"] == "rejected" and v["request"] in passed]
    return sft, pairs


def read_votes(path: Path) -> list[dict]:
    votes = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            sys.exit(f"{path}:{n}: not a JSON object ({err.msg})")
        if not isinstance(row, dict):
            sys.exit(f"{path}:{n}: not a JSON object")
        for key in ("request", "proposal", "outcome"):
            if not isinstance(row.get(key), str) or not row[key].strip():
                sys.exit(f"{path}:{n}: {key}: missing or empty")
        if row["outcome"] not in ("accepted", "rejected"):
            sys.exit(f"{path}:{n}: outcome: {row['outcome']!r}; expected accepted or rejected")
        votes.append(row)
    return votes


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--votes", type=Path, help="a vote record (JSONL, fields above); default: the synthetic quarter")
    ap.add_argument("--out", type=Path, default=HERE / "round2", help="folder for the files written")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.votes:
        votes = read_votes(args.votes)
    else:
        r = random.Random(r1.SEED)
        sft, prompts, eval_prompts = r1.build(r)  # round 1 again: the DAOs' addresses, and its requests to avoid
        seen = {m["content"] for row in sft + prompts + eval_prompts for m in row["messages"] if m["role"] == "user"}
        votes = quarter(random.Random(SEED), seen)
        r1.write(args.out / "votes.jsonl", votes)
    sft, pairs = training_data(votes)
    r1.write(args.out / "accepted.jsonl", sft)
    r1.write(args.out / "pairs.jsonl", pairs)
    rejected = sum(v["outcome"] == "rejected" for v in votes)
    if rejected > len(pairs):
        print(f"{rejected - len(pairs)} rejected proposal(s) had no accepted one for their request: no pair")


if __name__ == "__main__":
    main()
