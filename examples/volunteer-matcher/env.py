"""A multi-turn scheduling environment: the policy staffs a team for an incident, one assignment per turn.

    tunesmith rlhf -c examples/volunteer-matcher/grpo.yaml
    (= tunesmith rlhf --method grpo --grpo.env examples/volunteer-matcher/env.py:VolunteerScheduling ...)

A row (scenarios.jsonl, written by make_scenarios.py) holds volunteers (skills, an (x, y) position in km, free
time windows, bookings they already have) and a request (an incident at a position, a time window, the roles to
fill, a distance limit). reset(row) shows all of it and says how to answer; each step(action) reads one line
`assign V<number> to <role>` and scores it:

    skill fit        +1.0 when the volunteer has the role's skill, -0.5 when not
    distance         +0.5 when within the request's max_km of the incident
    time overlap     +0.5 x the share of the request window the volunteer is free (and not booked elsewhere)
    double-booking   -1.0 for a volunteer booked elsewhere during the window; -1.0 and not applied for one
                     already on this team
    invalid          -0.5 for an unknown volunteer or role, a role already filled, or no readable assignment
    team complete    +1.0 once every role is filled; the episode ends then, or after max_turns (the trainer's)

The trainer sums the step rewards of an episode. Everything follows from the row: no randomness here.
"""

from __future__ import annotations

import math
import re

ACTION = re.compile(r"assign\s+(V\d+)\s+to\s+([a-z][a-z0-9 -]*?)\s*[.!]?\s*$", re.IGNORECASE | re.MULTILINE)

SKILL, WRONG_SKILL, NEAR, OVERLAP = 1.0, -0.5, 0.5, 0.5
DOUBLE_BOOKED, INVALID, COMPLETE = -1.0, -0.5, 1.0


def minutes(hhmm: str) -> int:
    hours, mins = hhmm.split(":")
    return int(hours) * 60 + int(mins)


def overlap(a: tuple[int, int], b: tuple[int, int]) -> int:
    """Minutes two [start, end) windows share."""
    return max(0, min(a[1], b[1]) - max(a[0], b[0]))


class VolunteerScheduling:
    """reset(row) -> observation; step(action) -> (observation, reward, done)."""

    def reset(self, row: dict) -> str:
        request = row["request"]
        self.window = (minutes(request["window"][0]), minutes(request["window"][1]))
        self.max_km = float(request["max_km"])
        self.roles = list(request["roles"])
        self.assigned: dict[str, str] = {}  # role -> volunteer id
        x, y = request["location"]
        self.volunteers = {}
        for v in row["volunteers"]:
            vx, vy = v["location"]
            self.volunteers[v["id"]] = {
                **v,
                "km": round(math.hypot(vx - x, vy - y), 1),
                "free_w": [(minutes(a), minutes(b)) for a, b in v["free"]],
                "booked_w": [(minutes(a), minutes(b)) for a, b in v.get("booked", [])],
            }
        lines = [f"Incident: {request['incident']}, {request['window'][0]}-{request['window'][1]}.",
                 f"Roles to fill: {', '.join(self.roles)}.",
                 "Volunteers (skills; distance to the incident; free; already booked):"]
        for vid, v in self.volunteers.items():
            booked = "; booked " + ", ".join(f"{a}-{b}" for a, b in v["booked"]) if v.get("booked") else ""
            free = ", ".join(f"{a}-{b}" for a, b in v["free"])
            lines.append(f"{vid} {v['name']}: {', '.join(v['skills'])}; {v['km']} km; free {free}{booked}")
        lines += [f"Pick people with the role's skill, within {self.max_km:g} km, free for the whole window, and "
                  "never book anyone twice.",
                  "Answer with one assignment per turn, exactly: assign V<number> to <role>"]
        return "\n".join(lines)

    def step(self, action: str) -> tuple[str, float, bool]:
        found = ACTION.findall(action)
        if len(found) != 1:
            why = "no assignment found" if not found else f"{len(found)} assignments in one turn"
            return self._next(f"Not applied ({why}). Write exactly: assign V<number> to <role>.", INVALID)
        vid, role = found[0][0].upper(), found[0][1].strip().lower()
        if vid not in self.volunteers:
            return self._next(f"{vid} is not on the volunteer list.", INVALID)
        if role not in self.roles:
            return self._next(f"'{role}' is not a role of this request.", INVALID)
        if role in self.assigned:
            return self._next(f"{role} is already filled by {self.assigned[role]}.", INVALID)
        if vid in self.assigned.values():
            taken = next(r for r, v in self.assigned.items() if v == vid)
            return self._next(f"Not applied: {vid} is already on this team as {taken} (double-booking).", DOUBLE_BOOKED)
        v = self.volunteers[vid]
        parts, reward = [], 0.0
        if any(overlap(b, self.window) for b in v["booked_w"]):
            parts.append(f"booked elsewhere during the window ({DOUBLE_BOOKED:+g})")
            reward += DOUBLE_BOOKED
        fits = role in v["skills"]
        parts.append(f"{'has' if fits else 'lacks'} the skill ({SKILL if fits else WRONG_SKILL:+g})")
        reward += SKILL if fits else WRONG_SKILL
        if v["km"] <= self.max_km:
            parts.append(f"{v['km']} km, close enough ({NEAR:+g})")
            reward += NEAR
        else:
            parts.append(f"{v['km']} km, too far (+0)")
        free = sum(overlap(w, self.window) for w in v["free_w"]) - sum(overlap(b, self.window) for b in v["booked_w"])
        share = max(0.0, min(1.0, free / (self.window[1] - self.window[0])))
        parts.append(f"free {share:.0%} of the window ({OVERLAP * share:+.2f})")
        reward += OVERLAP * share
        self.assigned[role] = vid
        done = len(self.assigned) == len(self.roles)
        if done:
            reward += COMPLETE
            return f"Assigned {vid} to {role}: {', '.join(parts)}. Team complete ({COMPLETE:+g}).", reward, True
        return self._next(f"Assigned {vid} to {role}: {', '.join(parts)}.", reward)

    def _next(self, said: str, reward: float) -> tuple[str, float, bool]:
        still_open = [r for r in self.roles if r not in self.assigned]
        return f"{said} Roles still open: {', '.join(still_open)}.", reward, False
