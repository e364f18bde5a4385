"""Config: YAML, flags and Python fill the same model; flags override the file; unknown keys name the nearest."""

import pytest

from tunesmith.config import SFTConfig, help_text, load
from tunesmith.errors import ConfigError

YAML = """\
model: smollm2-135m-instruct
dataset: [data/a.jsonl]
lora: {rank: 8, alpha: 16}
learning_rate: 1e-3
max_length: 512
"""


def test_yaml_flags_and_python_build_the_same_config(tmp_path):
    path = tmp_path / "sft.yaml"
    path.write_text(YAML)
    from_file = load(SFTConfig, ["-c", str(path)])
    from_flags = load(SFTConfig, ["--model", "smollm2-135m-instruct", "--dataset", "data/a.jsonl", "--lora.rank", "8",
                                  "--lora.alpha", "16", "--learning-rate", "1e-3", "--max_length", "512"])
    from_python = SFTConfig(model="smollm2-135m-instruct", dataset=["data/a.jsonl"], lora={"rank": 8, "alpha": 16},
                            learning_rate=1e-3, max_length=512)
    assert from_file == from_flags == from_python
    assert from_file.learning_rate == 1e-3  # YAML 1.1 reads 1e-3 as a string; it still becomes a float


def test_flags_override_the_file(tmp_path):
    path = tmp_path / "sft.yaml"
    path.write_text(YAML)
    cfg = load(SFTConfig, ["-c", str(path), "--lora.rank", "4", "--packing", "--no-packing", "--epochs", "1"])
    assert (cfg.lora.rank, cfg.lora.alpha, cfg.packing, cfg.epochs) == (4, 16, False, 1.0)


def test_peer_aliases_map_to_our_keys():
    cfg = load(SFTConfig, ["--dataset", "x", "--lora_r", "4", "--cutoff_len", "256", "--num_train_epochs", "2",
                           "--per_device_train_batch_size", "3", "--model_name_or_path", "m"])
    assert (cfg.lora.rank, cfg.max_length, cfg.epochs, cfg.batch_size, cfg.model) == (4, 256, 2.0, 3, "m")


def test_the_python_api_takes_the_peer_aliases_and_names_the_nearest_key_as_the_cli_does(caplog):
    import logging

    from pydantic import ValidationError

    from tunesmith.config.rlhf import RLHFConfig

    with caplog.at_level(logging.INFO, logger="tunesmith"):
        cfg = SFTConfig(model_name_or_path="m", dataset=["d.jsonl"], lora_r=8, cutoff_len=256,
                        per_device_train_batch_size=2, num_train_epochs=1, lora={"alpha": 16})
    assert cfg == load(SFTConfig, ["--model", "m", "--dataset", "d.jsonl", "--lora.rank", "8", "--lora.alpha", "16",
                                   "--max-length", "256", "--batch-size", "2", "--epochs", "1"])
    assert "note: lora_r is called lora.rank in tunesmith" in caplog.messages
    assert SFTConfig(dataset=["d"], base_model="b", max_seq_length=64).model == "b"
    assert RLHFConfig(method="dpo", dataset=["d"], sequence_len=64).max_length == 64
    with pytest.raises(ValidationError, match="lerning_rate: unknown option; did you mean learning_rate"):
        SFTConfig(dataset=["d"], lerning_rate=1e-4)
    with pytest.raises(ValidationError, match="rnk: unknown option; did you mean rank"):
        SFTConfig(dataset=["d"], lora={"rnk": 8})


@pytest.mark.parametrize("command", ["sft", "pt", "rlhf"])
def test_the_peers_name_for_how_the_weights_train_is_our_tuner(command):
    """LLaMA-Factory's finetuning_type and ms-swift's train_type / tuner_type say lora, freeze or full: our `tuner`
    (in rlhf, `method` names the algorithm)."""
    from tunesmith.cli.main import COMMANDS

    cls = COMMANDS[command][0]
    for key in ("finetuning_type", "train_type", "tuner_type"):
        cfg = load(cls, ["--dataset", "x", f"--{key.replace('_', '-')}", "full"])
        assert cfg.tuner == "full" and getattr(cfg, "method", "dpo") == "dpo"  # rlhf's algorithm untouched


def test_unknown_flag_names_the_nearest_valid_one():
    with pytest.raises(ConfigError, match=r"unknown option --learning-rte; did you mean --learning-rate\?"):
        load(SFTConfig, ["--dataset", "x", "--learning-rte", "1e-4"])


def test_unknown_yaml_key_names_file_line_and_nearest(tmp_path):
    path = tmp_path / "sft.yaml"
    path.write_text(YAML + "lora_rnak: 4\n")
    with pytest.raises(ConfigError, match=r"sft.yaml:6: unknown option lora_rnak; did you mean lora_rank\?"):
        load(SFTConfig, ["-c", str(path)])
    path.write_text(YAML.replace("rank: 8", "rnak: 8"))
    with pytest.raises(ConfigError, match=r"sft.yaml:3: unknown option rnak; did you mean lora.rank\?"):
        load(SFTConfig, ["-c", str(path)])


def test_bad_value_names_file_line_and_field(tmp_path):
    path = tmp_path / "sft.yaml"
    path.write_text(YAML.replace("max_length: 512", "max_length: lots"))
    with pytest.raises(ConfigError, match=r"sft.yaml:5: max_length: .*integer.*'lots'"):
        load(SFTConfig, ["-c", str(path)])


def test_help_lists_every_option_with_its_default():
    text = help_text(SFTConfig, "tunesmith sft")
    for name in ["--model", "--dataset", "--lora.rank", "--max-length", "--learning-rate", "--output-dir", "--resume",
                 "--skip-bad-rows", "--loss-on", "--packing"]:
        assert name in text
    assert "[default: 16]" in text and "[default: 'lora']" in text


def test_openai_generation_names_and_comma_lists_are_accepted_where_a_command_generates():
    from tunesmith.config import DeployConfig, InferConfig
    from tunesmith.config.eval import EvalConfig

    infer = load(InferConfig, ["--max-tokens", "16", "--temperature", "0", "--seed", "3"])
    assert (infer.generation.max_tokens, infer.generation.temperature, infer.generation.seed) == (16, 0.0, 3)
    evaluate = load(EvalConfig, ["--dataset", "x", "--metrics", "bleu,rouge", "exact_match", "--top-p", "0.9"])
    assert evaluate.metrics == ["bleu", "rouge", "exact_match"] and evaluate.generation.top_p == 0.9
    deploy = load(DeployConfig, ["--stop", "a,b", "--adapters", "prd=runs/a/final,dao=runs/b/final"])
    assert deploy.generation.stop == ["a,b"]  # a stop string may hold a comma: never split
    assert deploy.adapters == ["prd=runs/a/final", "dao=runs/b/final"]
    with pytest.raises(ConfigError, match="given twice"):
        load(InferConfig, ["--max-tokens", "16", "--generation.max-tokens", "8"])
    assert "--max-tokens" in help_text(InferConfig, "tunesmith infer")


def test_help_lists_only_what_works():
    """Options that only refused ("in a later release") are gone from --help and refused as values."""
    from tunesmith.config import ExportConfig, InferConfig, PlanConfig

    assert "sglang" not in help_text(InferConfig, "tunesmith infer") and "lmdeploy" not in help_text(InferConfig, "x")
    with pytest.raises(ConfigError, match="backend"):
        load(InferConfig, ["--backend", "sglang"])
    # --merge-lora false writes the adapter itself (with its lineage) since P4: listed, and both values work
    assert "--merge-lora" in help_text(ExportConfig, "tunesmith export")
    assert load(ExportConfig, ["--adapters", "runs/a/final", "--merge-lora"]).merge_lora is True
    assert load(ExportConfig, ["--adapters", "runs/a/final", "--merge-lora", "false"]).merge_lora is False
    # plan names only tuners sft runs (galore trains since P15): each planned command is one sft accepts
    from tunesmith.config import SFTConfig
    from tunesmith.plan.run import plan

    for tuner in ("galore", "lisa", "freeze"):
        command = plan(load(PlanConfig, ["qwen2.5-0.5b-instruct", "--tuner", tuner, "--gpu-memory", "80"]))["command"]
        assert load(SFTConfig, command.split()[2:]).tuner == tuner
    with pytest.raises(ConfigError, match="tuner"):
        load(PlanConfig, ["--tuner", "q-galore"])


def test_chat_template_kwargs_as_json_or_one_key_per_flag_merge_with_the_file(tmp_path):
    from tunesmith.config import DeployConfig, InferConfig
    from tunesmith.config.eval import EvalConfig

    as_json = load(InferConfig, ["--chat-template-kwargs", '{"enable_thinking": false}'])
    one_key = load(InferConfig, ["--chat-template-kwargs.enable-thinking", "false"])
    assert as_json.chat_template_kwargs == one_key.chat_template_kwargs == {"enable_thinking": False}
    assert load(EvalConfig, ["--dataset", "d", "--chat-template-kwargs={enable_thinking: true}"]).chat_template_kwargs \
        == {"enable_thinking": True}
    path = tmp_path / "deploy.yaml"
    path.write_text("chat_template_kwargs: {enable_thinking: false, date_string: 01 Jan 2026}\n")
    cfg = load(DeployConfig, ["-c", str(path), "--chat-template-kwargs.enable-thinking", "true"])
    assert cfg.chat_template_kwargs == {"enable_thinking": True, "date_string": "01 Jan 2026"}
    with pytest.raises(ConfigError, match=r"--chat-template-kwargs: expected a mapping"):
        load(InferConfig, ["--chat-template-kwargs", "enable_thinking"])
    with pytest.raises(ConfigError, match=r"did you mean --chat-template-kwargs\?"):
        load(InferConfig, ["--chat-templat-kwargs.enable-thinking", "false"])


def test_a_repeated_list_flag_collects_its_values():
    from tunesmith.config import InferConfig

    cfg = load(InferConfig, ["--image", "a,1.png", "--image", "b.png", "c.png", "--stop", "x", "--stop", "y"])
    assert cfg.image == ["a,1.png", "b.png", "c.png"]  # a file name keeps its comma
    assert cfg.generation.stop == ["x", "y"]


def test_a_list_key_given_one_string_takes_it_as_its_items(tmp_path):
    """LLaMA-Factory and HF Trainer YAML write `dataset: a,b` and `report_to: none`; Python users dataset="x"."""
    from tunesmith.config import InferConfig

    path = tmp_path / "sft.yaml"
    path.write_text("dataset: data/a.jsonl, data/b.jsonl\nreport_to: none\nlora_target: q_proj,v_proj\n")
    cfg = load(SFTConfig, ["-c", str(path)])
    assert (cfg.dataset, cfg.report_to, cfg.lora.targets) == (["data/a.jsonl", "data/b.jsonl"], ["none"],
                                                              ["q_proj", "v_proj"])
    assert SFTConfig(dataset="data/a.jsonl").dataset == ["data/a.jsonl"]
    assert SFTConfig(dataset="x", lora={"targets": "all-linear"}).lora.targets == "all-linear"
    assert InferConfig(stop="a,b").generation.stop == ["a,b"]  # a stop string keeps its comma


def test_plan_reads_a_training_commands_file_and_flags(tmp_path):
    """PRODUCT: `tunesmith plan` with the same flags (or -c sft.yaml) plans that run; it refused `dataset`."""
    from tunesmith.config import PlanConfig

    path = tmp_path / "sft.yaml"
    path.write_text(YAML + "epochs: 1\noutput_dir: runs/x\nlora_target: [q_proj, v_proj]\n")
    cfg = load(PlanConfig, ["-c", str(path)])
    assert (cfg.model, cfg.tuner, cfg.lora_rank, cfg.lora_targets, cfg.max_length) == (
        "smollm2-135m-instruct", "lora", 8, ["q_proj", "v_proj"], 512)  # no tuner in the file: sft's lora
    flags = load(PlanConfig, ["--dataset", "d.jsonl", "--lora.rank", "4", "--learning-rate", "1e-4",
                              "--tuner", "qlora"])
    assert (flags.tuner, flags.lora_rank) == ("qlora", 4)
    rlhf = load(PlanConfig, ["--method", "dpo", "--dataset", "p.jsonl"])
    assert rlhf.tuner == "lora"
    assert load(PlanConfig, []).tuner == "auto"  # plan alone still picks
    private = tmp_path / "dp.yaml"
    private.write_text("dataset: d.jsonl\ndp: {epsilon: 8, delta: 1.0e-5}\n")
    assert load(PlanConfig, ["-c", str(private)]).dp is True  # sft's dp section
    with pytest.raises(ConfigError, match=r"unknown option --datset; did you mean --dataset\?"):
        load(PlanConfig, ["--datset", "d.jsonl"])


def test_plan_takes_the_nested_keys_of_the_sections_it_reads_as_flags(tmp_path, capsys):
    """`dp: {epsilon: 8}` in plan's YAML was read, but `tunesmith plan --dp.epsilon 8` was refused (unknown option),
    and a misspelt key inside either section passed silently (planned as not private)."""
    import json

    from tunesmith.cli.main import main
    from tunesmith.config import PlanConfig

    def planned(*args) -> dict:
        assert main(["plan", *args, "--json", "--gpu-memory", "24"]) == 0
        return {k: v for k, v in json.loads(capsys.readouterr().out).items() if k != "hardware"}  # free RAM moves

    path = tmp_path / "dp.yaml"
    path.write_text("dp: {epsilon: 8}\n")
    from_yaml = planned("-c", path)
    assert any(note.startswith("dp: ") and "per-sample gradients" in note for note in from_yaml["notes"])
    assert planned("--dp.epsilon", "8") == from_yaml != planned()
    assert planned("--dp", "epsilon=8,delta=1e-5") == from_yaml  # sft's own spelling of the section
    lora = load(PlanConfig, ["--lora.rank", "4", "--lora.targets", "q_proj,v_proj"])
    assert (lora.lora_rank, lora.lora_targets) == (4, ["q_proj", "v_proj"])
    for flag, near in [("--dp.epsilonn", "--dp.epsilon"), ("--lora.rnak", "--lora.rank")]:
        with pytest.raises(ConfigError, match=rf"unknown option {flag}; did you mean {near}\?"):
            load(PlanConfig, [flag, "8"])
    with pytest.raises(ConfigError, match=r"dp.epsilon: Input should be greater than 0"):
        load(PlanConfig, ["--dp.epsilon", "0"])


@pytest.mark.parametrize("tuner, key, small, big", [("galore", "rank", 32, 256), ("lisa", "layers", 1, 8),
                                                     ("freeze", "trainable_layers", 1, 8), ("reft", "rank", 2, 64)])
def test_plan_sizes_each_tuner_by_its_own_section_as_sft_does(tuner, key, small, big, tmp_path, capsys):
    """`plan -c sft.yaml` planned galore.rank, lisa.layers, freeze.trainable_layers and reft.rank as plan's own
    lora_rank (16) and trained_layers (2) defaults: the same plan for any size."""
    import json

    from tunesmith.cli.main import main

    def planned(*args) -> dict:
        assert main(["plan", *map(str, args), "--json", "--gpu-memory", "80"]) == 0
        return {k: v for k, v in json.loads(capsys.readouterr().out).items() if k != "hardware"}  # free RAM moves

    def from_yaml(size: int) -> dict:
        path = tmp_path / f"{size}.yaml"
        path.write_text(f"dataset: [d.jsonl]\ntuner: {tuner}\n{tuner}: {{{key}: {size}}}\nlora: {{rank: 16}}\n")
        return planned("-c", path)

    def trained(plan: dict) -> float:  # galore: the optimizer states live in the rank-r projection
        estimate = plan["recommended"]["estimate"]
        return estimate["breakdown_gib"]["optimizer"] if tuner == "galore" else estimate["trainable_params"]

    assert trained(from_yaml(big)) > trained(from_yaml(small))
    assert from_yaml(big) == planned("--tuner", tuner, f"--{tuner}.{key.replace('_', '-')}", big)
    if key == "rank":  # the suggested command trains the planned rank
        assert f"--{tuner}.rank {big} " in from_yaml(big)["command"]


def test_a_missing_key_says_how_to_give_it():
    from tunesmith.config.data import DataCleanConfig

    with pytest.raises(ConfigError, match=r"dataset: required: give --dataset, or dataset: in the -c file$"):
        load(SFTConfig, [])
    with pytest.raises(ConfigError, match=r"output: required: give it as argument 2 after the command, or --output$"):
        load(DataCleanConfig, ["clean", "in.jsonl"])  # tunesmith data clean IN OUT without OUT


def test_data_check_max_length_without_a_model_is_refused_not_ignored():
    """Rows are measured in a model's tokens: without --model, every row passed a length check it never had."""
    from tunesmith.config import DataCheckConfig

    with pytest.raises(ConfigError, match=r"max_length: rows are measured in the tokens of a model; add --model"):
        load(DataCheckConfig, ["check", "d.jsonl", "--max-length", "64"])
    assert load(DataCheckConfig, ["check", "d.jsonl", "--max-length", "64", "--model", "m"]).max_length == 64


def test_a_text_options_flag_value_is_the_text_typed_not_yaml():
    """`--output-dir 2024`, `--system yes`, `--dataset 123` are names and sentences: read as YAML they became an int,
    a bool and an int, which the config refused ("Input should be a valid string")."""
    cfg = load(SFTConfig, ["--dataset", "123", "--output-dir", "2024", "--system", "yes", "--model-name", "No",
                           "--base-model", "7"])
    assert (cfg.dataset, cfg.output_dir, cfg.system, cfg.model_name, cfg.model) == (["123"], "2024", "yes", "No", "7")
    cfg = load(SFTConfig, ["--dataset", "d", "--adapters", "null", "--resume", "true", "--max-steps", "3"])
    assert (cfg.adapters, cfg.resume, cfg.max_steps) == (None, True, 3)  # null unsets; other types still read


def test_positional_arguments_may_follow_single_valued_options():
    """`data check --model M FILE` read FILE as a second value of --model ("got ['m', 'd.jsonl']"), and `plan --tuner
    lora MODEL` crashed with a TypeError: an option that takes one value takes one, as argparse reads it."""
    from tunesmith.config import DataCheckConfig, DownloadConfig, PlanConfig

    check = load(DataCheckConfig, ["check", "--model", "m", "--max-length", "64", "a.jsonl", "b.jsonl"])
    assert (check.model, check.max_length, check.dataset) == ("m", 64, ["a.jsonl", "b.jsonl"])
    assert load(PlanConfig, ["--tuner", "lora", "qwen2.5-7b-instruct"]).model == "qwen2.5-7b-instruct"
    assert load(PlanConfig, ["--packing", "qwen2.5-7b-instruct"]).packing is True  # a bool takes no file name
    assert load(PlanConfig, ["--packing", "false", "m"]).packing is False
    assert load(PlanConfig, ["--no-packing", "m"]).model == "m"
    assert load(DownloadConfig, ["--kind", "dataset", "org/name"]).kind == "dataset"
    assert load(PlanConfig, ["--lora-targets", "q_proj", "v_proj"]).lora_targets == ["q_proj", "v_proj"]  # lists
    with pytest.raises(ConfigError, match="unexpected argument 'extra'"):
        load(PlanConfig, ["--tuner", "lora", "m", "extra"])
