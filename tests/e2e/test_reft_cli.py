"""tunesmith sft --tuner reft through the console script's main() in this process (the interventions are hooks on the
one model, nothing global), then its final/ answered by `tunesmith infer` and by a real `tunesmith deploy` process
(the transformers engine) with the same text, which is not the base model's; export refuses it."""

import json

from e2e_cli import assert_preflight_recorded, read_metrics, request, run_main, running

PROMPTS = [[{"role": "user", "content": "code for river"}], [{"role": "user", "content": "code for maple"}]]


def test_reft_trains_through_the_cli_and_infer_and_deploy_answer_with_its_interventions(tiny_model, toy_data,
                                                                                          tmp_path):
    run = tmp_path / "run"
    run_main("sft", "--model", tiny_model, "--dataset", toy_data, "--tuner", "reft", "--reft.layers", "0,1",
             "--reft.rank", "4", "--reft.positions", "f1+l1", "--learning-rate", "2e-2", "--max-steps", "8",
             "--batch-size", "4", "--warmup-ratio", "0", "--logging-steps", "1", "--output-dir", run,
             "--report-to", "none")
    final = run / "final"
    losses = [m["loss"] for m in read_metrics(run) if "loss" in m]
    assert len(losses) == 8 and losses[-1] < losses[0]
    assert_preflight_recorded(run)
    assert (final / "reft" / "interventions.safetensors").exists() and not (final / "adapter_config.json").exists()

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"messages": p}) + "\n" for p in PROMPTS))
    answers = {}
    for name, where in (("reft", ["--adapters", final]), ("base", ["--model", tiny_model])):
        run_main("infer", *where, "--dataset", prompts, "--output", tmp_path / f"{name}.jsonl", "--max-tokens", "8",
                 "--temperature", "0")
        answers[name] = [json.loads(line)["response"] for line in (tmp_path / f"{name}.jsonl").read_text().splitlines()]
    assert answers["reft"] != answers["base"]  # the interventions are applied where infer answers

    with running("--adapters", f"reft={final}", "--device", "cpu", log=tmp_path / "deploy.log") as server:
        for prompt, expected in zip(PROMPTS, answers["reft"]):
            status, body = request(server, "POST", "/v1/chat/completions", json.dumps(
                {"model": "reft", "messages": prompt, "max_tokens": 8, "temperature": 0}).encode(),
                {"Content-Type": "application/json"})
            assert status == 200, body
            assert body["choices"][0]["message"]["content"] == expected

    refused = run_main("export", "--adapters", final, "--merge-lora", "--output", tmp_path / "merged", check=False)
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert "no merged form" in refused.stderr and not (tmp_path / "merged").exists()
