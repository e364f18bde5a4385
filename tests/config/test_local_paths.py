"""A run's config.yaml holds the local paths typed relative as absolute ones (config/local_paths.py), and leaves hub
ids, registry names, presets and absolute paths as written."""

from tunesmith.config.local_paths import with_absolute_paths
from tunesmith.config.rlhf import RLHFConfig


def test_relative_local_paths_are_recorded_absolute_and_names_are_left_alone(tmp_path):
    for name in ("data/pairs.jsonl", "rewards.py", "env.py", "runs/sft/final/config.json"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("")
    elsewhere = tmp_path / "elsewhere.jsonl"
    cfg = RLHFConfig(method="grpo", model="Qwen/Qwen2.5-0.5B-Instruct", adapters="runs/sft/final",
                     dataset=["data/pairs.jsonl#20", "prd-assistant", "org/prompts", str(elsewhere)],
                     rewards={"funcs": ["format"], "plugin": ["rewards.py"]}, grpo={"env": "env.py:Matcher"},
                     deepspeed="zero3", resume=True, output_dir="runs/grpo")
    (tmp_path / "runs" / "grpo").mkdir()
    data = with_absolute_paths(cfg, cfg.model_dump(mode="json"), tmp_path)
    assert data["dataset"] == [f"{tmp_path}/data/pairs.jsonl#20", "prd-assistant", "org/prompts", str(elsewhere)]
    assert (data["adapters"], data["output_dir"]) == (f"{tmp_path}/runs/sft/final", f"{tmp_path}/runs/grpo")
    assert data["rewards"]["plugin"] == [f"{tmp_path}/rewards.py"] and data["rewards"]["funcs"] == ["format"]
    assert data["grpo"]["env"] == f"{tmp_path}/env.py:Matcher"
    assert (data["model"], data["deepspeed"], data["resume"]) == ("Qwen/Qwen2.5-0.5B-Instruct", "zero3", True)
    assert RLHFConfig.model_validate(data).dataset == data["dataset"]  # the record loads back as a config
