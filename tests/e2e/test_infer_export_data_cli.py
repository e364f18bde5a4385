"""`tunesmith infer`, `export` and `data check` through the console script: the terminal chat and the refused data
through a new interpreter, the rest through its main() in this process (the same parsing and messages)."""

import json

import pytest
import torch

from e2e_cli import run_cli, run_main


@pytest.fixture(scope="module")
def trained_run(tiny_model, toy_data, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "toy"
    run_main("sft", "--model", tiny_model, "--dataset", f"{toy_data}#48", "--max-steps", "12", "--batch-size", "4",
             "--learning-rate", "5e-3", "--output-dir", run, "--report-to", "none")
    return run


def test_infer_batch_answers_every_row_with_the_runs_base_model(trained_run, toy_data, tmp_path):
    out = tmp_path / "answers.jsonl"
    proc = run_main("infer", "--adapters", trained_run / "final", "--dataset", toy_data, "--output", out,
                    "--batch-size", "5", "--generation.max-tokens", "6")
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 12 and f"wrote 12 answers to {out}" in proc.stderr
    assert all(isinstance(r["response"], str) and r["completion_tokens"] <= 6 for r in rows)
    assert rows[0]["messages"] == [{"role": "user", "content": "code for apple"}]  # the reference answer is not sent


def test_infer_chat_reads_turns_and_reset_from_stdin(tiny_model):
    # infer's run through the console script: the chat reads the process's own stdin
    proc = run_cli("infer", "--model", tiny_model, "--max-tokens", "3", "--temperature", "0",  # OpenAI's names
                   stdin="hello\nfirst line\\\nsecond line\n/reset\n/exit\nnever read\n")
    assert proc.returncode == 0 and "(conversation cleared)" in proc.stderr
    assert proc.stdout.endswith("\n") and proc.stdout.strip("\n") != "" or proc.stdout.count("\n") >= 2


def test_export_merge_writes_a_plain_model_whose_logits_equal_the_adapters(trained_run, tiny_model, tmp_path):
    out = tmp_path / "merged"
    proc = run_main("export", "--adapters", trained_run / "final", "--merge-lora", "--output", out)
    assert "max |logit difference|" in proc.stderr
    assert not (out / "adapter_config.json").exists() and (out / "model.safetensors").exists()

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tunesmith.templates import Template

    ids = torch.tensor([Template.load(out).render_prompt([{"role": "user", "content": "code for river"}])])
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32),
                                        trained_run / "final")
    with torch.no_grad():
        diff = (merged(ids).logits - adapter(ids).logits).abs().max().item()
        with adapter.disable_adapter():
            base_diff = (adapter(ids).logits - merged(ids).logits).abs().max().item()
    assert diff < 1e-4
    assert base_diff > 1e-3  # the merge really carries the adapter


def test_data_check_reports_planted_bad_rows_and_token_stats(tiny_model, toy_data, tmp_path):
    bad = tmp_path / "planted.jsonl"
    bad.write_text(toy_data.read_text() + "\n".join([
        '{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}]}',
        '{"messages": [{"role": "customer", "content": "q"}, {"role": "assistant", "content": "a"}]}',
        '{"instruction": 3, "output": "a"}',
        "not json at all",
    ]) + "\n")
    proc = run_cli("data", "check", bad, "--model", tiny_model, check=False)
    assert proc.returncode == 1
    for expected in [f"{bad}:13: messages[1].content: empty assistant turn",
                     f"{bad}:14: messages[0].role: unknown role 'customer'",
                     f"{bad}:15: instruction: expected a string, got int",
                     f"{bad}:16: json: not valid JSON"]:
        assert expected in proc.stdout  # the report; the verdict on stderr
    assert "4 bad row(s)" in proc.stderr
    good = run_main("data", "check", toy_data, "--model", tiny_model)  # the console script is proven just above
    assert "good rows" in good.stdout and "median" in good.stdout and "messages: 12" in good.stdout
