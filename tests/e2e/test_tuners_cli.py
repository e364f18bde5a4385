"""Each tuner beyond LoRA (and DP-SGD) end to end: `tunesmith sft --tuner ...` through the console script (LongLoRA's
attention and DP-SGD's per-sample gradients in their own process; the tuners that patch nothing global through its
main() in this process: the same flags, parsing and run), then its final/ answered by `tunesmith infer`'s batch path
and by the server (in process) with the same text: adapters load on the untouched base, whole-model tuners as a model
folder."""

import json
from pathlib import Path

import pytest
from e2e_cli import assert_preflight_recorded, read_metrics, run_cli, run_main
from fastapi.testclient import TestClient

PROMPT = [{"role": "user", "content": "code for river"}]
TUNERS = {
    "galore": ["--tuner", "galore", "--galore.rank", "4", "--galore.update-interval", "2"],
    "lisa": ["--tuner", "lisa", "--lisa.layers", "1", "--lisa.interval", "2"],
    "freeze": ["--tuner", "freeze", "--freeze.trainable-layers", "1", "--freeze.modules", "lm_head"],
    "loha": ["--tuner", "loha", "--peft.args", '{"r": 4, "alpha": 8}', "--learning-rate", "1e-2"],
    "pissa+": ["--lora.init", "pissa", "--lora.plus-ratio", "16", "--lora.rslora", "--neftune-alpha", "5"],
    "eva": ["--lora.init", "eva", "--lora.rank", "4", "--lora.eva-batches", "2"],
    "longlora": ["--tuner", "longlora", "--lora.rank", "4", "--longlora.target-length", "8192", "--longlora.rope-scaling",
                 "yarn", "--longlora.group-size-ratio", "0.5"],
    "dp": ["--dp", "epsilon=50,delta=1e-5,max_grad_norm=1.0", "--learning-rate", "1e-2"],  # a weak guarantee:
}                                                                          # little noise, so 4 steps learn


@pytest.mark.parametrize("name", TUNERS)
def test_a_tuner_trains_through_the_cli_and_its_output_is_served(name, tiny_model, toy_data, tmp_path):
    from tunesmith.api import infer
    from tunesmith.config import DeployConfig, InferConfig
    from tunesmith.infer import load_engine
    from tunesmith.serve.app import build_app

    run = tmp_path / "run"
    own_process = name in ("longlora", "dp")
    (run_cli if own_process else run_main)(
        "sft", "--model", tiny_model, "--dataset", toy_data, "--learning-rate", "1e-3", *TUNERS[name], "--max-steps", "4",
        "--batch-size", "4", "--warmup-ratio", "0", "--logging-steps", "1", "--output-dir", run, "--report-to", "none")
    final = run / "final"
    losses = [m["loss"] for m in read_metrics(run) if "loss" in m]
    assert len(losses) == 4 and losses[-1] < losses[0]
    assert_preflight_recorded(run)
    adapter = (final / "adapter_config.json").exists()
    assert adapter == (name in ("loha", "pissa+", "eva", "dp"))
    if name == "longlora":  # served with the RoPE scaling it trained with (and full attention)
        config = json.loads((final / "config.json").read_text())
        assert config["rope_parameters"]["rope_type"] == "yarn" and config["max_position_embeddings"] == 8192
    if name == "dp":
        assert read_metrics(run)[-1]["dp_epsilon"] > 0 and "differential privacy" in (final / "README.md").read_text()

    where = {"adapters": str(final)} if adapter else {"model": str(final)}
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"messages": PROMPT}) + "\n")
    answers = infer(InferConfig(**where, dataset=[str(prompts)], output=str(tmp_path / "a.jsonl"),
                                generation={"max_tokens": 8, "temperature": 0}))
    expected = json.loads(Path(answers).read_text().splitlines()[0])["response"]

    deploy = DeployConfig(**({"adapters": [str(final)]} if adapter else {"model": str(final)}), device="cpu")
    engine = load_engine("transformers", deploy.model, {"run": str(final)} if adapter else None, "cpu", "auto")
    with TestClient(build_app(engine, deploy)) as client:
        model = client.get("/v1/models").json()["data"][-1]["id"]
        reply = client.post("/v1/chat/completions", json={"model": model, "messages": PROMPT, "max_tokens": 8,
                                                           "temperature": 0})
    assert reply.status_code == 200, reply.text
    assert reply.json()["choices"][0]["message"]["content"] == expected
