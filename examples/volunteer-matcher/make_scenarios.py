"""Write scenarios.jsonl: 40 seeded scheduling scenarios for env.py. Every scenario has a perfect team (for each
role someone with the skill, close, free for the whole window, not booked) hidden among distractors that are far,
partly free, already booked, or have other skills.

Also writes sft_demos.jsonl: 200 episodes on 200 other scenarios, played by a coordinator who writes every answer in
the environment's format but picks the perfect volunteer only 60% of the time (else anyone with the skill), with the
environment's own observations between the turns. SFT on them teaches the format (a 135M model never writes it
unprompted); GRPO then has good and mediocre teams to tell apart.

    python examples/volunteer-matcher/make_scenarios.py
"""

from __future__ import annotations

import json
import math
import random
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from env import VolunteerScheduling  # noqa: E402
SKILLS = ["first-aid", "driver", "cook", "translator", "logistics", "counselor", "electrician", "search-and-rescue"]
NAMES = ["Ana", "Ben", "Chen", "Dana", "Eli", "Fatima", "Goran", "Hana", "Ivan", "Jia", "Kofi", "Lena", "Mateo",
         "Nia", "Omar", "Priya", "Quinn", "Rosa", "Sami", "Tomas", "Uma", "Vera", "Wei", "Yusuf", "Zoe"]
INCIDENTS = ["flood relief at the Riverside school", "food distribution after the market fire",
             "evacuation centre at the sports hall", "heatwave checks on elderly residents",
             "storm clean-up in the harbour district", "blood drive at the community centre",
             "shelter set-up after the landslide", "power cut support in the north estate"]


def hhmm(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def scenario(rng: random.Random, index: int) -> dict:
    start = rng.choice(range(7 * 60, 15 * 60, 60))
    length = rng.choice([120, 180, 240])
    window = (start, start + length)
    location = [round(rng.uniform(0, 30), 1), round(rng.uniform(0, 30), 1)]
    max_km = rng.choice([5, 8, 10])
    roles = rng.sample(SKILLS, rng.choice([2, 3, 3, 4]))

    def point(low: float, high: float) -> list[float]:  # between `low` and `high` km from the incident
        angle, dist = rng.uniform(0, 2 * math.pi), rng.uniform(low, high)
        return [location[0] + dist * math.cos(angle), location[1] + dist * math.sin(angle)]

    people = []
    for role in roles:  # the perfect match for each role
        skills = sorted({role, *rng.sample(SKILLS, rng.choice([0, 1]))})
        people.append({"skills": skills, "location": point(0.5, max_km * 0.8),
                       "free": [(window[0] - rng.choice([0, 60]), window[1] + rng.choice([0, 60, 120]))], "booked": []})
    for _ in range(rng.choice([3, 4, 5])):  # distractors, each failing one test
        role, flaw = rng.choice(roles), rng.choice(["far", "partly free", "booked", "other skill"])
        person = {"skills": [role], "location": point(0.5, max_km * 0.8), "free": [window], "booked": []}
        if flaw == "far":
            person["location"] = point(max_km * 1.5, max_km * 3)
        elif flaw == "partly free":
            person["free"] = [(window[0] + length // 2, window[1] + 120)]
        elif flaw == "booked":
            person["free"] = [(window[0] - 60, window[1] + 60)]
            person["booked"] = [(window[0] + 60, window[0] + 120)]
        else:
            person["skills"] = rng.sample([s for s in SKILLS if s not in roles], 2)
        people.append(person)
    rng.shuffle(people)
    names = rng.sample(NAMES, len(people))
    volunteers = [{"id": f"V{i + 1}", "name": names[i], "skills": p["skills"],
                   "location": [round(c, 1) for c in p["location"]],
                   "free": [[hhmm(a), hhmm(b)] for a, b in p["free"]],
                   "booked": [[hhmm(a), hhmm(b)] for a, b in p["booked"]]} for i, p in enumerate(people)]
    return {"id": f"scenario-{index:02d}",
            "request": {"incident": rng.choice(INCIDENTS), "location": location,
                        "window": [hhmm(window[0]), hhmm(window[1])], "roles": roles, "max_km": max_km},
            "volunteers": volunteers}


def reward_of(row: dict, action: str) -> float:
    """The reward of one assignment made first, on a fresh environment."""
    env = VolunteerScheduling()
    env.reset(row)
    return env.step(action)[1]


def demo(rng: random.Random, row: dict) -> dict:
    """One episode as a conversation: the observation, then one assignment per turn, until the team is complete."""
    env = VolunteerScheduling()
    messages = [{"role": "user", "content": env.reset(row)}]
    for role in row["request"]["roles"]:
        free = [v for v in row["volunteers"] if v["id"] not in env.assigned.values()]
        skilled = [v["id"] for v in free if role in v["skills"]] or [v["id"] for v in free]
        best = max(skilled, key=lambda vid: reward_of(row, f"assign {vid} to {role}"))
        pick = best if rng.random() < 0.6 else rng.choice(skilled)
        action = f"assign {pick} to {role}"
        observation, _, done = env.step(action)
        messages.append({"role": "assistant", "content": action})
        if not done:
            messages.append({"role": "user", "content": observation})
    return {"messages": messages}


def main() -> None:
    rng = random.Random(7)
    rows = [scenario(rng, i) for i in range(40)]
    path = HERE / "scenarios.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    print(f"wrote {len(rows)} scenarios to {path}")
    demo_rng = random.Random(11)
    demos = [demo(demo_rng, scenario(demo_rng, 100 + i)) for i in range(200)]
    path = HERE / "sft_demos.jsonl"
    path.write_text("".join(json.dumps(d) + "\n" for d in demos), encoding="utf-8")
    print(f"wrote {len(demos)} demonstration episodes to {path}")


if __name__ == "__main__":
    main()
