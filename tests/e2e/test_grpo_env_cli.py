"""`tunesmith rlhf --method grpo --env path.py:ClassName` through the console script on the tiny random model: the
volunteer-scheduling episodes run for several turns, their reward reaches the trainer's metrics, and only the
policy's own tokens count as its completion."""

from pathlib import Path

from e2e_cli import assert_preflight_recorded, read_metrics, run_cli, run_main

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "volunteer-matcher"


def test_multi_turn_episodes_run_and_their_reward_reaches_metrics(tiny_model, tmp_path):
    run = tmp_path / "grpo-env"
    run_cli("rlhf", "--method", "grpo", "--grpo.env", f"{EXAMPLE / 'env.py'}:VolunteerScheduling", "--model",
            tiny_model, "--dataset", EXAMPLE / "scenarios.jsonl", "--grpo.num-generations", "2", "--max-steps", "2",
            "--grpo.max-turns", "3", "--grpo.max-turn-tokens", "6", "--rollout.max-completion-length", "150",
            "--logging-steps", "1", "--output-dir", run, "--report-to", "none")
    logs = [m for m in read_metrics(run) if "rewards/env_reward/mean" in m]
    assert len(logs) == 2
    for m in logs:
        # A random model never writes a valid assignment: each turn is malformed (-0.5), none ends the episode,
        # so all three turns run, and the episode reward the trainer logs is the environment's sum.
        assert m["episodes/turns"] == 3 and m["episodes/done"] == 0
        assert m["rewards/env_reward/mean"] == -0.5 * 3 and m["reward"] == -1.5
        # TRL counts only unmasked tokens: the 3 x 6 sampled ones, not the observations between them.
        assert m["completions/mean_length"] == 3 * 6
    assert (run / "final" / "adapter_model.safetensors").exists()
    assert_preflight_recorded(run)


def test_a_broken_environment_fails_before_training_naming_file_and_line(tiny_model, tmp_path):
    env = tmp_path / "broken_env.py"
    env.write_text("class Broken:\n    def reset(self, row):\n        return 'hi'\n    def step(self, action)\n")
    proc = run_main("rlhf", "--method", "grpo", "--env", f"{env}:Broken", "--model", tiny_model,
                    "--dataset", EXAMPLE / "scenarios.jsonl", "--num-generations", "2", "--max-steps", "1",
                    "--output-dir", tmp_path / "run", "--report-to", "none", check=False)
    assert proc.returncode == 2
    assert f"{env}:4: syntax error" in proc.stderr
    assert not (tmp_path / "run" / "final").exists()
