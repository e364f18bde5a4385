"""A reward model (`rlhf --method rm`'s final/, a score head) named where eval needs a model that writes answers:
refused by the field that named it before anything is written or loaded, on every path (the transformers and vLLM
engines, lm-eval's `hf` model, EvalScope's served model), since all of them take their models from eval/targets.py."""

import json
import os

import pytest
import yaml

from tunesmith import api
from tunesmith.config import load
from tunesmith.config.eval import EvalConfig
from tunesmith.errors import ConfigError
from tunesmith.eval.targets import targets_from

ROWS = [{"messages": [{"role": "user", "content": "code for apple"},
                      {"role": "assistant", "content": "CODE apple OK"}]}]


@pytest.fixture(scope="module")
def rm_final(tmp_path_factory):
    """runs/rm/final as `rlhf --method rm` saves it: a 2-layer LlamaForSequenceClassification (num_labels=1, hidden 64,
    head_dim 32) with its tokenizer, and the run's config.yaml beside it."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, LlamaConfig

    from tunesmith.models.embedded import prepared_folder

    tokenizer = AutoTokenizer.from_pretrained(os.environ.get("TUNESMITH_TEST_TOKENIZER") or prepared_folder())
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=32, num_labels=1,
                         pad_token_id=tokenizer.pad_token_id)
    final = tmp_path_factory.mktemp("runs") / "rm" / "final"
    AutoModelForSequenceClassification.from_config(config, dtype=torch.float32).save_pretrained(final)
    tokenizer.save_pretrained(final)
    (final.parent / "config.yaml").write_text(yaml.safe_dump({"model": "smollm2-135m-instruct", "method": "rm"}))
    return final


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return path


@pytest.fixture
def loads(monkeypatch):
    """Every engine eval would load (none should): the transformers or vLLM backend, or EvalScope's served model."""
    seen = []

    def fake_load(backend, model=None, adapters=None, *args, **kwargs):
        seen.append((backend, model, adapters))
        raise AssertionError(f"an engine loaded: {backend} {model} {adapters}")

    monkeypatch.setattr("tunesmith.infer.load_engine", fake_load)
    return seen


def refusal(field: str, folder) -> str:
    """The one message: the field, the folder, what it is, what to do with it."""
    return (rf"^{field}: {folder}: a reward model \(LlamaForSequenceClassification\): it scores answers.*cannot "
            rf"generate text\. Use it as --rewards\.model {folder} in tunesmith rlhf --method grpo or ppo$")


@pytest.mark.parametrize("backend", ["transformers", "vllm"])
def test_eval_refuses_a_reward_model_before_writing_or_loading_anything(rm_final, data, tmp_path, loads, backend):
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match=refusal("model", rm_final)):
        api.evaluate(load(EvalConfig, ["--model", str(rm_final), "--dataset", str(data), "--output-dir", str(out),
                                       "--backend", backend]))
    assert not out.exists() and not (out / "answers.jsonl").exists()  # before: an empty answers.jsonl, config.yaml
    assert loads == []


def test_every_field_that_names_a_model_is_checked(rm_final, data, tmp_path, loads):
    """--compare NAME=RM, --adapters RM (a full model given as a run), and --model RM as the base of --adapters."""
    lora = tmp_path / "runs" / "lora" / "final"
    lora.mkdir(parents=True)
    (lora / "adapter_config.json").write_text("{}")
    out = tmp_path / "out"
    for args, field in ((["--compare", "base=smollm2-135m-instruct", f"rm={rm_final}"], "compare"),
                        (["--adapters", str(rm_final)], "adapters"),
                        (["--adapters", str(lora), "--model", str(rm_final)], "model")):
        with pytest.raises(ConfigError, match=refusal(field, rm_final)):
            api.evaluate(load(EvalConfig, [*args, "--dataset", str(data), "--output-dir", str(out)]))
        assert not out.exists()
    assert loads == []


def test_the_cli_names_the_field_in_one_line_and_leaves_nothing(rm_final, data, tmp_path, capsys):
    """The real engine: before, it refused the folder only as it loaded, the output folder already made (config.yaml
    and an empty answers.jsonl left behind), the message naming no field."""
    from tunesmith.cli.main import main

    out = tmp_path / "out"
    code = main(["eval", "--model", str(rm_final), "--dataset", str(data), "--output-dir", str(out)])
    assert code == ConfigError.exit_code
    assert not (out / "answers.jsonl").exists() and not out.exists()
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith(f"error: model: {rm_final}: a reward model")
    assert f"--rewards.model {rm_final}" in errors[0]


@pytest.mark.parametrize("backend", ["lm-eval", "evalscope"])
@pytest.mark.parametrize("with_dataset", [False, True])
def test_benchmarks_refuse_a_reward_model_before_the_harness_is_asked(rm_final, data, tmp_path, loads, monkeypatch,
                                                                       backend, with_dataset):
    """--benchmark alone (eval/benchmarks.py evaluate_benchmarks) and beside --dataset (eval/run.py): the refusal comes
    before the harness's checks, so neither lm-eval nor EvalScope's venv is needed to see it; before, lm-eval's `hf`
    model was given the folder as pretrained= and EvalScope was served it as a causal LM."""
    from tunesmith.eval import benchmarks, evalscope_backend

    def harness(*args, **kwargs):
        raise AssertionError("the benchmark harness was reached")

    monkeypatch.setattr(benchmarks, "plan", harness)
    monkeypatch.setattr(benchmarks, "_require_lm_eval", harness)
    monkeypatch.setattr(evalscope_backend, "check_evalscope", harness)
    monkeypatch.setattr(benchmarks, "run_benchmarks", harness)
    out = tmp_path / "out"
    cfg = EvalConfig(benchmark=["gsm8k"], benchmark_backend=backend, model=str(rm_final), output_dir=str(out),
                     dataset=[str(data)] if with_dataset else [])
    with pytest.raises(ConfigError, match=refusal("model", rm_final)):
        api.evaluate(cfg)
    assert not out.exists() and loads == []


def test_benchmark_target_resolution_refuses_it_where_the_harness_model_is_built(rm_final):
    """targets_from is where every path gets its models: lm-eval's model_for and EvalScope's _endpoint only take what
    it returns."""
    for backend in ("lm-eval", "evalscope"):
        with pytest.raises(ConfigError, match=refusal("compare", rm_final)):
            targets_from(EvalConfig(benchmark=["gsm8k"], benchmark_backend=backend, compare=[f"rm={rm_final}"]))


def test_chat_models_endpoints_and_encoder_tasks_still_pass(rm_final, data, tmp_path):
    """A chat model folder is no scorer; an endpoint is not a folder; --task reranking and classification evaluate
    scorers, so a one-score model is what they take."""
    chat = tmp_path / "chat"
    chat.mkdir()
    (chat / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    targets = targets_from(EvalConfig(model=str(chat), compare=["served=http://127.0.0.1:9/v1", "m=some-model"],
                                      dataset=[str(data)]))
    assert [t.kind for t in targets] == ["model", "endpoint", "model"]
    assert targets_from(EvalConfig(task="reranking", model=str(rm_final), dataset=[str(data)]))[0].spec == str(rm_final)


def test_a_reward_model_in_the_hub_cache_is_refused_by_its_hub_id(rm_final, data, tmp_path, loads, monkeypatch):
    """--model ORG/NAME already cached: the snapshot folder is checked (one not cached is only downloaded later)."""
    monkeypatch.setattr("tunesmith.hub.cached_snapshot",
                        lambda repo_id, kind="model": str(rm_final) if repo_id == "org/reward-model" else None)
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match=refusal("model", rm_final).replace("^model: ", "^model: org/reward-model, "
                                                                                        "cached at ")):
        api.evaluate(load(EvalConfig, ["--model", "org/reward-model", "--dataset", str(data),
                                       "--output-dir", str(out)]))
    assert not out.exists() and loads == []
