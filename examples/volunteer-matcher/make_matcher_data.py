"""Write the matcher's data: a volunteer roster, incident needs, training rows for the embedder and the reranker, and a
held-out retrieval set (seeded; already shipped).

    python examples/volunteer-matcher/make_matcher_data.py [--volunteers 150 --train-incidents 150 --heldout 40]

The town is a 3 x 3 grid of districts 5 km apart. A volunteer lives in one (within 0.25 km of its centre), holds one
or two skills written as certificates ("EMT-Basic licence", "category C truck licence"), and is free in one window
of the day; some already have a booking (what the scheduler sees, not the profile). An incident happens in one
district, in a time window, and needs 2-4 roles, each written as a need ("someone to treat minor injuries").
A volunteer is relevant to a need when they have its skill and live within max_km (6 km: their own or an adjacent
district, never a diagonal one): grade 2 when free for the whole window, grade 1 when not.

Files (in this folder):
  volunteers.jsonl      the roster: id, name, skills, certificates, district, location, free, booked, profile text
  incidents.jsonl       every incident, split train or heldout, its roles and one need text per role
  embed_train.jsonl     query (a need) / positive (a grade-2 profile) / negative (a near miss): sft --task embedding
  rerank_train.jsonl    query / positive / up to 7 negatives (2 grade 1, 2 far, 3 near with another skill):
                        sft --task reranker
  heldout/              BEIR folder of the held-out needs: corpus.jsonl (the roster), queries.jsonl, qrels/test.tsv
"""

from __future__ import annotations

import argparse
import json
import math
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
SPACING, JITTER, MAX_KM = 5.0, 0.25, 6.0
DISTRICTS = [["Northgate", "Hillcrest", "Eastbrook"], ["Westfield", "Old Town", "Riverside"],
             ["Harbour", "Millbank", "Southport"]]
SITES = ["the primary school", "the sports hall", "the community centre", "the church hall", "the library",
         "the bus depot", "the market square", "the care home"]
INCIDENTS = ["Flood relief", "Storm clean-up", "Evacuation centre", "Heatwave checks", "Shelter set-up",
             "Food distribution", "Power cut support", "Fire recovery"]
# skill (the environment's names, env.py) -> how profiles write it, how needs ask for it
SKILLS = {
    "first-aid": (["Red Cross first aid certificate", "EMT-Basic licence", "registered nurse",
                   "St John Ambulance first responder"],
                  ["someone to treat minor injuries", "medical first response for evacuees",
                   "a person who can give first aid", "triage of walk-in casualties"]),
    "driver": (["category C truck licence", "minibus driver (D1 licence)", "clean driving licence and own van",
                "HGV class 1 certified"],
               ["a driver to move supplies between depots", "transport for residents to the shelter",
                "a van driver for deliveries", "someone to drive the minibus"]),
    "cook": (["food hygiene level 2 certificate", "trained chef", "community kitchen volunteer",
              "catering manager"],
             ["someone to prepare hot meals", "help to run the field kitchen", "a cook for 200 people",
              "meals for the volunteers and residents"]),
    "translator": (["fluent in Arabic and Ukrainian", "certified interpreter (DPSI)", "speaks Polish and Romanian",
                    "sign language interpreter (BSL level 6)"],
                   ["interpreting for families who speak no English", "translation of registration forms",
                    "language support at the help desk", "an interpreter for the briefing"]),
    "logistics": (["warehouse supervisor", "supply chain coordinator", "inventory management course",
                   "forklift licence and stock control"],
                  ["someone to organise donated goods", "a manager for the supply depot",
                   "tracking stock of blankets and water", "loading and sorting relief pallets"]),
    "counselor": (["psychological first aid training", "qualified counsellor (BACP)", "crisis helpline volunteer",
                   "trauma support worker"],
                  ["emotional support for displaced residents", "someone to talk with distressed survivors",
                   "a listening ear at the shelter", "support for children who lost their homes"]),
    "electrician": (["licensed electrician", "18th edition wiring regulations", "generator maintenance technician",
                     "electrical installer (NVQ level 3)"],
                    ["restoring power to the shelter", "setting up and checking generators",
                     "making the wiring safe", "an electrician for emergency lighting"]),
    "search-and-rescue": (["mountain rescue team member", "swiftwater rescue technician",
                           "urban search and rescue (USAR) trained", "lifeguard and boat handler"],
                          ["searching collapsed buildings", "finding missing people", "water rescue in flooded streets",
                           "a rescuer for the cut-off farms"]),
}
FIRST = ["Ana", "Ben", "Chen", "Dana", "Eli", "Fatima", "Goran", "Hana", "Ivan", "Jia", "Kofi", "Lena", "Mateo", "Nia",
         "Omar", "Priya", "Quinn", "Rosa", "Sami", "Tomas", "Uma", "Vera", "Wei", "Yusuf", "Zoe", "Aisha", "Bruno",
         "Carla", "Dev", "Elif"]
LAST = ["Ruiz", "Okafor", "Novak", "Haddad", "Kowalski", "Tanaka", "Mensah", "Silva", "Petrov", "Nguyen", "Byrne",
        "Costa", "Ahmed", "Larsen", "Moreau", "Singh", "Walsh", "Yilmaz", "Fischer", "Adeyemi"]


def hhmm(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def centre(district: tuple[int, int]) -> tuple[float, float]:
    return district[1] * SPACING, district[0] * SPACING


def name_of(district: tuple[int, int]) -> str:
    return DISTRICTS[district[0]][district[1]]


def volunteer(rng: random.Random, index: int) -> dict:
    district = (rng.randrange(3), rng.randrange(3))
    x, y = centre(district)
    skills = rng.sample(list(SKILLS), rng.choice([1, 1, 2]))
    certificates = [rng.choice(SKILLS[s][0]) for s in skills]
    start = rng.choice(range(6 * 60, 17 * 60, 60))
    free = (start, min(start + rng.choice([240, 360, 480]), 23 * 60))
    booked = []
    if rng.random() < 0.2:  # already on another team for an hour of their free time
        b = rng.choice(range(free[0], free[1] - 60, 60))
        booked = [[hhmm(b), hhmm(b + 60)]]
    name = f"{rng.choice(FIRST)} {rng.choice(LAST)}"
    profile = (f"{name}. {'; '.join(certificates)}. Lives in {name_of(district)}. "
               f"Free {hhmm(free[0])}-{hhmm(free[1])}.")
    return {"id": f"vol-{index:03d}", "name": name, "skills": sorted(skills), "certificates": certificates,
            "district": name_of(district), "location": [round(x + rng.uniform(-JITTER, JITTER), 2),
                                                        round(y + rng.uniform(-JITTER, JITTER), 2)],
            "free": [[hhmm(free[0]), hhmm(free[1])]], "booked": booked, "profile": profile}


def incident(rng: random.Random, index: int, split: str) -> dict:
    district = (rng.randrange(3), rng.randrange(3))
    x, y = centre(district)
    start = rng.choice(range(7 * 60, 16 * 60, 60))
    window = (start, start + rng.choice([120, 180, 240]))
    roles = rng.sample(list(SKILLS), rng.choice([2, 3, 3, 4]))
    title = f"{rng.choice(INCIDENTS)} at {rng.choice(SITES)} in {name_of(district)}"
    needs = {role: f"{title}, {hhmm(window[0])}-{hhmm(window[1])}: {rng.choice(SKILLS[role][1])}." for role in roles}
    return {"id": f"{split}-{index:03d}", "split": split, "incident": title,
            "location": [round(x + rng.uniform(-JITTER, JITTER), 2), round(y + rng.uniform(-JITTER, JITTER), 2)],
            "district": name_of(district), "window": [hhmm(window[0]), hhmm(window[1])], "roles": roles,
            "max_km": MAX_KM, "needs": needs}


def minutes(text: str) -> int:
    h, m = text.split(":")
    return int(h) * 60 + int(m)


def grade(v: dict, inc: dict, role: str) -> int:
    """2: the skill, within max_km, free the whole window; 1: the skill and near, not free throughout; 0: not."""
    if role not in v["skills"] or math.dist(v["location"], inc["location"]) > inc["max_km"]:
        return 0
    (a, b), (s, e) = [minutes(t) for t in v["free"][0]], [minutes(t) for t in inc["window"]]
    return 2 if a <= s and e <= b else 1


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--volunteers", type=int, default=150)
    parser.add_argument("--train-incidents", type=int, default=150)
    parser.add_argument("--heldout", type=int, default=40)
    parser.add_argument("--out", type=Path, default=HERE)
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    more = random.Random(args.seed + 1)  # the reranker's extra negatives: the other rows stay as they were
    roster = [volunteer(rng, i) for i in range(args.volunteers)]
    incidents = [incident(rng, i, "train") for i in range(args.train_incidents)]
    incidents += [incident(rng, i, "heldout") for i in range(args.heldout)]
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "volunteers.jsonl", roster)
    write_jsonl(out / "incidents.jsonl", incidents)

    embed_rows, rerank_rows = [], []
    for inc in (i for i in incidents if i["split"] == "train"):
        for role, need in inc["needs"].items():
            graded = {v["id"]: grade(v, inc, role) for v in roster}
            best = [v for v in roster if graded[v["id"]] == 2]
            partly = [v for v in roster if graded[v["id"]] == 1]
            far = [v for v in roster if role in v["skills"] and graded[v["id"]] == 0]
            near_other = [v for v in roster if role not in v["skills"]
                          and math.dist(v["location"], inc["location"]) <= inc["max_km"]]
            for positive in rng.sample(best, min(2, len(best))):
                misses = partly + far + near_other
                embed_rows.append({"query": need, "positive": positive["profile"],
                                   "negative": rng.choice(misses)["profile"]})
            if best:
                negatives = [rng.choice(pool)["profile"] for pool in (partly, far, near_other) if pool]
                positive = rng.choice(best)["profile"]
                for pool, most in ((partly, 2), (far, 2), (near_other, 3)):  # more near misses, 7 in all at most
                    rest = [v["profile"] for v in pool if v["profile"] not in negatives]
                    taken = sum(1 for v in pool if v["profile"] in negatives)
                    negatives += more.sample(rest, max(0, min(most - taken, len(rest))))
                rerank_rows.append({"query": need, "positive": positive, "negatives": negatives})
    write_jsonl(out / "embed_train.jsonl", embed_rows)
    write_jsonl(out / "rerank_train.jsonl", rerank_rows)

    beir = out / "heldout"
    (beir / "qrels").mkdir(parents=True, exist_ok=True)
    write_jsonl(beir / "corpus.jsonl", [{"_id": v["id"], "title": "", "text": v["profile"]} for v in roster])
    queries, qrels = [], ["query-id\tcorpus-id\tscore"]
    for inc in (i for i in incidents if i["split"] == "heldout"):
        for role, need in inc["needs"].items():
            qid = f"{inc['id']}:{role}"
            queries.append({"_id": qid, "text": need})
            qrels += [f"{qid}\t{v['id']}\t{g}" for v in roster if (g := grade(v, inc, role))]
    write_jsonl(beir / "queries.jsonl", queries)
    (beir / "qrels" / "test.tsv").write_text("\n".join(qrels) + "\n", encoding="utf-8")
    print(f"wrote {len(roster)} volunteers, {len(incidents)} incidents, {len(embed_rows)} embedding rows, "
          f"{len(rerank_rows)} reranker rows, {len(queries)} held-out needs ({len(qrels) - 1} judged pairs) to {out}")


if __name__ == "__main__":
    main()
