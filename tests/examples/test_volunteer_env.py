"""The volunteer-scheduling environment (examples/volunteer-matcher/env.py): its rewards rank teams the way a
coordinator would, it penalises double-booking and unreadable answers, and a scripted multi-turn episode runs to
done through the same rollout function GRPO trains with."""

import itertools
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from tunesmith.config.rlhf import RLHFConfig
from tunesmith.train import episodes

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "volunteer-matcher"
SPEC = f"{EXAMPLE / 'env.py'}:VolunteerScheduling"

# One incident 12:00-15:00, limit 10 km, two roles. V1/V2 are the right team; V3 is far, V4 booked elsewhere at
# 13:00, V5 free only from 13:30, V6 has neither skill.
ROW = {
    "request": {"incident": "flood relief", "location": [0, 0], "window": ["12:00", "15:00"],
                "roles": ["first-aid", "driver"], "max_km": 10},
    "volunteers": [
        {"id": "V1", "name": "Ana", "skills": ["first-aid"], "location": [3, 4], "free": [["11:00", "16:00"]]},
        {"id": "V2", "name": "Ben", "skills": ["driver", "cook"], "location": [0, 6], "free": [["12:00", "15:00"]]},
        {"id": "V3", "name": "Chen", "skills": ["first-aid"], "location": [30, 40], "free": [["12:00", "15:00"]]},
        {"id": "V4", "name": "Dana", "skills": ["driver"], "location": [1, 1], "free": [["12:00", "15:00"]],
         "booked": [["13:00", "14:00"]]},
        {"id": "V5", "name": "Eli", "skills": ["driver"], "location": [2, 2], "free": [["13:30", "18:00"]]},
        {"id": "V6", "name": "Fatima", "skills": ["cook"], "location": [1, 0], "free": [["12:00", "15:00"]]},
    ],
}


@pytest.fixture(scope="module")
def Env():
    return episodes.load_env(SPEC)


def play(Env, row, actions):
    env = Env()
    first = env.reset(row)
    steps = [env.step(a) for a in actions]
    return first, steps


def test_the_observation_explains_the_scenario_and_the_answer_format(Env):
    first, _ = play(Env, ROW, [])
    assert "Roles to fill: first-aid, driver." in first
    assert "V1 Ana: first-aid; 5.0 km; free 11:00-16:00" in first
    assert "V4 Dana: driver; 1.4 km; free 12:00-15:00; booked 13:00-14:00" in first
    assert first.endswith("assign V<number> to <role>")


def test_a_good_team_scores_above_bad_ones(Env):
    def total(actions):
        _, steps = play(Env, ROW, actions)
        assert steps[-1][2] is True  # two assignments fill both roles
        return sum(r for _, r, _ in steps)

    good = total(["assign V1 to first-aid", "assign V2 to driver"])
    assert good == pytest.approx(2.0 + 2.0 + 1.0)  # skill + distance + full overlap, twice, + team complete
    far = total(["assign V3 to first-aid", "assign V2 to driver"])        # loses the distance reward
    late = total(["assign V1 to first-aid", "assign V5 to driver"])       # free for half the window
    unskilled = total(["assign V6 to first-aid", "assign V2 to driver"])  # wrong skill
    assert good - far == pytest.approx(0.5)
    assert good - late == pytest.approx(0.25)
    assert good - unskilled == pytest.approx(1.5)
    assert good > late > far > unskilled


def test_double_booking_is_penalised(Env):
    _, steps = play(Env, ROW, ["assign V1 to first-aid", "assign V1 to driver", "assign V4 to driver"])
    obs, reward, done = steps[1]  # the same person twice: not applied, role stays open
    assert reward == -1.0 and not done and "double-booking" in obs and "Roles still open: driver." in obs
    obs, reward, done = steps[2]  # booked elsewhere 13:00-14:00: applied, penalised, and only 2 of 3 hours free
    assert "booked elsewhere" in obs and done
    assert reward == pytest.approx(-1.0 + 1.0 + 0.5 + 0.5 * 2 / 3 + 1.0)


@pytest.mark.parametrize("action, says", [
    ("I would pick Ana.", "no assignment found"),
    ("assign V1 to first-aid\nassign V2 to driver", "2 assignments in one turn"),
    ("assign V9 to driver", "V9 is not on the volunteer list"),
    ("assign V1 to pilot", "'pilot' is not a role of this request"),
    ("", "no assignment found"),
])
def test_malformed_actions_cost_a_turn_and_say_how_to_answer(Env, action, says):
    _, [(obs, reward, done)] = play(Env, ROW, [action])
    assert reward == -0.5 and not done and says in obs and "Roles still open: first-aid, driver." in obs


def test_every_shipped_scenario_has_a_perfect_team_that_wins(Env):
    rows = [json.loads(line) for line in (EXAMPLE / "scenarios.jsonl").read_text().splitlines()]
    assert len(rows) == 40
    for row in rows:
        roles = row["request"]["roles"]
        ids = [v["id"] for v in row["volunteers"]]
        # one assignment's reward does not depend on the others (distinct people), so score each pair once
        score = {(v, r): play(Env, row, [f"assign {v} to {r}"])[1][0][1] for v in ids for r in roles}
        best = max(itertools.permutations(ids, len(roles)), key=lambda team: sum(score[p] for p in zip(team, roles)))
        _, steps = play(Env, row, [f"assign {v} to {r}" for v, r in zip(best, roles)])
        assert sum(r for _, r, _ in steps) == pytest.approx(2.0 * len(roles) + 1.0), row["id"]
        distractors = [v for v in ids if v not in best]
        assert max(score[(v, r)] for v in distractors for r in roles) < 2.0, row["id"]  # only the team is perfect


class ScriptedTrainer:
    """Stands in for GRPOTrainer in the rollout: each episode answers with its next scripted action, encoded the way
    the template encodes an answer (text + end-of-turn token)."""

    def __init__(self, tokenizer, scripts, budget=1024, end="<|im_end|>"):
        self.tokenizer, self.scripts, self.end = tokenizer, [list(s) for s in scripts], end
        self.max_completion_length = budget
        self.generation_config = SimpleNamespace(max_new_tokens=budget)
        self.seen = [None] * len(scripts)

    def _generate_single_turn(self, prompt_ids, images, fields, num_generations):
        out, taken = [], set()
        for ids in prompt_ids:  # which episode: the first one not yet served whose last input this one extends
            j = next(j for j, s in enumerate(self.seen) if j not in taken and (s is None or ids[: len(s)] == s))
            self.seen[j] = ids
            taken.add(j)
            action = self.scripts[j].pop(0)
            out.append(self.tokenizer(action + self.end, add_special_tokens=False)["input_ids"])
        return out, None


def test_a_scripted_episode_runs_to_done_and_its_reward_reaches_the_trainer(Env, tmp_path):
    from real_tokenizers import smollm2_tokenizer
    from tunesmith.templates import Template

    data = tmp_path / "one.jsonl"
    data.write_text(json.dumps(ROW) + "\n")
    template = Template(smollm2_tokenizer())
    cfg = RLHFConfig(method="grpo", dataset=[str(data)], seed=0, max_length=2048, rollout={"max_completion_length": 512},
                     grpo={"env": SPEC, "max_turns": 5, "max_turn_tokens": None})
    run = episodes.rollout_func_for(cfg, template)
    prompts = [run.train_dataset[0]["prompt"]] * 2  # GRPO repeats a prompt num_generations times
    trainer = ScriptedTrainer(template.tokenizer, [
        ["Let me think.", "assign V1 to first-aid", "assign V2 to driver", "never asked"],
        ["assign V3 to first-aid", "assign V3 to driver", "assign V5 to driver"],
    ])
    out = run.rollout_func(prompts, trainer)
    assert out["env_turns"] == [3, 3] and out["env_done"] == [True, True]
    assert out["env_reward"] == pytest.approx([-0.5 + 2.0 + 3.0, 1.5 - 1.0 + 2.75])
    assert trainer.scripts[0] == ["never asked"]  # the episode stopped at done
    # The trainer sees one sequence per episode; only the policy's tokens are trained.
    text = template.tokenizer.decode(out["completion_ids"][0])
    assert text.count("<|im_start|>user") == 2 and "Team complete" not in text  # the final observation is not shown
    trained = [t for t, m in zip(out["completion_ids"][0], out["env_mask"][0]) if m]
    assert template.tokenizer.decode(trained) == ("Let me think.<|im_end|>assign V1 to first-aid<|im_end|>"
                                                  "assign V2 to driver<|im_end|>")
    logged = {}  # what TRL's GRPOTrainer hands the reward functions, from the fields the rollout returned
    rewards = episodes.env_reward(completions=[None, None], env_reward=out["env_reward"], env_turns=out["env_turns"],
                                  env_done=out["env_done"], log_metric=logged.__setitem__)
    assert rewards == out["env_reward"] and logged == {"episodes/turns": 3.0, "episodes/done": 1.0}
