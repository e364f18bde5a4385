"""LoReFT (tuner reft, models/reft.py) checked for what it claims: the intervention is h + R^T(Wh + b - Rh) with R's
rows orthonormal, it starts as the identity, it edits exactly the prompt tokens asked for (packed samples each on their
own, decode steps none), only the interventions train, and the saved folder reloads to the same logits."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from tunesmith import api
from tunesmith.config import SFTConfig, load
from tunesmith.errors import ConfigError
from tunesmith.models import reft
from tunesmith.models.load import load_model

WORDS = ["apple", "river", "stone", "cloud", "maple", "tiger"]
SPEC = {"layers": [0, 1], "rank": 4, "positions": "f1+l1", "share_weights": False, "dropout": 0.0}


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "toy.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"code for {w}"},
                          {"role": "assistant", "content": f"CODE {w} OK"}]} for w in WORDS]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


@pytest.fixture(scope="module")
def trained(tiny, toy, tmp_path_factory):
    """A reft run of 6 steps on the toy rows (fixed seed) and the base weights it started from."""
    base = {k: v.clone() for k, v in AutoModelForCausalLM.from_pretrained(tiny).state_dict().items()}
    out = tmp_path_factory.mktemp("reft") / "run"
    cfg = SFTConfig(model=str(tiny), dataset=[str(toy)], tuner="reft", reft={"layers": [0, 1], "rank": 2},
                    batch_size=3, max_steps=6, learning_rate=5e-3, warmup_ratio=0, report_to=["none"], logging_steps=1,
                    save_steps=3, output_dir=str(out))
    return api.sft(cfg), base


def test_the_intervention_is_the_loreft_formula():
    torch.manual_seed(0)
    module = reft.LoReFT(hidden=3, rank=2)
    r = module.rotate.weight.detach()
    assert torch.allclose(r @ r.T, torch.eye(2), atol=1e-6)  # orthonormal rows
    with torch.no_grad():
        module.source.weight.copy_(torch.tensor([[1.0, 0.0, 2.0], [0.0, -1.0, 1.0]]))
        module.source.bias.copy_(torch.tensor([0.5, -0.5]))
    h = torch.tensor([[1.0, 2.0, 3.0]])
    w, b = module.source.weight.detach(), module.source.bias.detach()
    by_hand = h[0] + r.T @ (w @ h[0] + b - r @ h[0])  # h + R^T (W h + b - R h), written out
    assert torch.allclose(module(h)[0], by_hand, atol=1e-6)
    # the edit stays in R's row space: its part orthogonal to R's rows is zero
    edit = module(h)[0] - h[0]
    assert torch.allclose(edit - r.T @ (r @ edit), torch.zeros(3), atol=1e-5)


def test_at_init_the_model_is_unchanged(tiny):
    base = AutoModelForCausalLM.from_pretrained(tiny).eval()
    ids = torch.tensor([[1, 5, 9, 14, 3, 7]])
    expected = base(ids).logits
    for positions in ("f1+l1", "all"):
        model = AutoModelForCausalLM.from_pretrained(tiny).eval()
        interventions = reft.attach(model, {**SPEC, "positions": positions})
        module = interventions.layers["0"][interventions.groups[0]]
        assert torch.equal(module.source.weight, module.rotate.weight) and not module.source.bias.any()
        assert torch.allclose(model(ids).logits, expected, atol=1e-5)
        with torch.no_grad():  # a non-zero bias: the model now differs (the hooks do run)
            module.source.bias.fill_(1.0)
        assert not torch.allclose(model(ids).logits, expected, atol=1e-3)


def test_positions_are_the_prompts_first_and_last_tokens():
    labels = torch.tensor([[-100, -100, -100, -100, 7, 8, -100],    # a prompt of 4 tokens, padding after
                           [-100, -100, -100, 6, 7, -100, -100]])   # a prompt of 3
    attention = torch.tensor([[1, 1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 0, 0]])
    first, last = reft.prompt_masks((2, 7), (2, 1), labels, attention, None)
    assert first.nonzero().tolist() == [[0, 0], [0, 1], [1, 0]]  # f2, at most half of a 3-token prompt: 1
    assert last.nonzero().tolist() == [[0, 3], [1, 2]]           # the token before the answer
    # packed: two samples in one row, position_ids restarting at 0; each sample's prompt on its own
    packed = torch.tensor([[-100, -100, 5, 6, -100, -100, -100, 9]])
    positions = torch.tensor([[0, 1, 2, 3, 0, 1, 2, 3]])
    first, last = reft.prompt_masks((1, 8), (1, 1), packed, None, positions)
    assert first.nonzero()[:, 1].tolist() == [0, 4] and last.nonzero()[:, 1].tolist() == [1, 6]
    # generation: a left-padded prefill without labels edits each row's whole prompt's ends, padding excluded
    first, last = reft.prompt_masks((2, 5), (1, 1), None, torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]]), None)
    assert first.nonzero().tolist() == [[0, 2], [1, 0]] and last.nonzero().tolist() == [[0, 4], [1, 4]]


def test_training_rows_with_several_answers_are_named_once(tiny, caplog):
    """Positions come from the prompt before a sample's first answer: a multi-turn row trained on every answer gets a
    warning naming --loss-on last; packed single-answer samples do not."""
    model = AutoModelForCausalLM.from_pretrained(tiny)
    reft.attach(model, SPEC)
    ids = torch.tensor([[1, 5, 9, 14, 3, 7, 8, 2]])
    packed = {"input_ids": ids, "labels": torch.tensor([[-100, -100, 9, 14, -100, -100, 8, 2]]),
              "position_ids": torch.tensor([[0, 1, 2, 3, 0, 1, 2, 3]])}
    with caplog.at_level("WARNING", logger="tunesmith"):
        model(**packed)
        assert "several answers" not in caplog.text
        for _ in range(2):
            model(input_ids=ids, labels=packed["labels"])  # the same tokens as one two-turn sample
    assert caplog.text.count("--loss-on last") == 1


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_a_packed_row_gives_each_sample_the_logits_it_has_alone(tiny, device):
    """Packing (TRL's padding-free rows, position_ids restarting per sample, our varlen attention): each sample's
    first and last prompt tokens are edited as when it runs alone, so its logits are the same. Edits made large: a
    position taken from the wrong sample would move them by far more than the tolerance. CUDA: bf16, flash kernel."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from tunesmith.infer import attention

    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(tiny, dtype=dtype).to(device).eval()
    interventions = reft.attach(model, {**SPEC, "positions": "f2+l1"})
    torch.manual_seed(0)
    with torch.no_grad():
        for p in interventions.parameters():
            p.add_(torch.randn_like(p))
    gen = torch.Generator().manual_seed(0)
    rows = []
    for n, prompt in ((9, 4), (15, 7), (6, 3)):
        ids = torch.randint(5, 1000, (n,), generator=gen).tolist()
        rows.append({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:]})
    with torch.no_grad():
        alone = [model(input_ids=torch.tensor([r["input_ids"]], device=device),
                       labels=torch.tensor([r["labels"]], device=device)).logits[0] for r in rows]
        attention.use_varlen(model)
        batch = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)(rows)
        packed = model(**{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()},
                       use_cache=False).logits[0]
    # f2 and l1 of each sample; the 3-token prompt gets f1 (at most half a prompt, as pyreft)
    assert [m.sum().item() for m in interventions.masks.values()] == [2 + 2 + 1, 3]
    start = 0
    for logits in alone:
        part = packed[start:start + len(logits)].float()
        start += len(logits)
        assert ((part - logits.float()).norm() / logits.float().norm()).item() < (2e-2 if device == "cuda" else 1e-5)


def test_generation_edits_the_prompt_at_prefill_and_no_decoded_token(tiny):
    model = AutoModelForCausalLM.from_pretrained(tiny).eval()
    interventions = reft.attach(model, SPEC)
    seen = []
    model.model.layers[1].register_forward_hook(lambda m, a, o: seen.append({g: m.nonzero().tolist()
                                                                              for g, m in interventions.masks.items()}))
    model.generate(torch.tensor([[1, 5, 9, 14]]), attention_mask=torch.ones(1, 4, dtype=torch.long), max_new_tokens=3,
                   do_sample=False, pad_token_id=0)
    assert seen[0] == {"first": [[0, 0]], "last": [[0, 3]]}
    assert seen[1:] == [{}, {}]


def test_only_interventions_train_and_the_saved_folder_reloads_to_the_same_logits(trained, tiny):
    result, base = trained
    final = result.final_dir
    assert sorted(p.name for p in (final / "reft").iterdir()) == ["config.json", "interventions.safetensors"]
    assert not (final / "model.safetensors").exists() and not (final / "config.json").exists()
    config = json.loads((final / "reft" / "config.json").read_text())
    assert config["layers"] == [0, 1] and config["rank"] == 2 and config["positions"] == "f1+l1"
    assert json.loads((final / "lineage.json").read_text())["kind"] == "reft"
    assert result.last_loss < result.first_loss
    # checkpoints hold the interventions only, and the run recorded 2 layers x 2 groups x (2 x 64 x 2 + 2) weights
    from safetensors import safe_open

    with safe_open(str(result.run_dir / "checkpoint-3" / "model.safetensors"), "pt") as f:
        assert all(k.startswith("reft.layers.") for k in f.keys())  # noqa: SIM118 (safe_open is not iterable)
    import yaml

    resolved = yaml.safe_load((result.run_dir / "config.yaml").read_text())["_resolved"]
    assert resolved["trainable_params"] == 2 * 2 * (2 * 64 * 2 + 2)

    model = load_model(final, torch.float32, "cpu").eval()
    for name, tensor in model.state_dict().items():  # the base as it was, bit for bit
        if not name.startswith("reft."):
            assert torch.equal(tensor, base[name]), name
    trained_source = model.reft.layers["0"]["first"].source
    assert not torch.equal(trained_source.weight, model.reft.layers["0"]["first"].rotate.weight)  # it learned
    ids = torch.tensor([[1, 5, 9, 14, 3, 7]])
    again = AutoModelForCausalLM.from_pretrained(tiny).eval()
    reft.load_into(again, final)
    assert torch.equal(model(ids).logits, again(ids).logits)
    plain = AutoModelForCausalLM.from_pretrained(tiny).eval()
    assert not torch.allclose(plain(ids).logits, model(ids).logits, atol=1e-4)


def test_a_resumed_run_ends_with_the_same_interventions(trained, tiny, toy, tmp_path):
    """Checkpoints hold only the interventions (and the optimizer's states); resuming at step 3 ends where the
    uninterrupted run ended, bit for bit."""
    from safetensors.torch import load_file

    result, _ = trained
    cfg = SFTConfig(model=str(tiny), dataset=[str(toy)], tuner="reft", reft={"layers": [0, 1], "rank": 2},
                    batch_size=3, max_steps=6, learning_rate=5e-3, warmup_ratio=0, report_to=["none"],
                    logging_steps=1, save_steps=3, output_dir=str(tmp_path / "resumed"),
                    resume=str(result.run_dir / "checkpoint-3"))
    resumed = api.sft(cfg)
    whole = load_file(str(result.final_dir / "reft" / "interventions.safetensors"))
    again = load_file(str(resumed.final_dir / "reft" / "interventions.safetensors"))
    assert resumed.steps == 6 and whole.keys() == again.keys()
    assert all(torch.equal(whole[k], again[k]) for k in whole)


def test_the_tools_that_load_weights_their_own_way_refuse_a_reft_run(trained):
    """export (no merged form) and the benchmark harness (it loads the weights itself, without the hooks) refuse a
    ReFT run naming what to do instead (vLLM's refusal runs where vllm is installed: its own venv)."""
    from tunesmith.config import ExportConfig
    from tunesmith.config.eval import EvalConfig
    from tunesmith.eval.benchmarks import model_for
    from tunesmith.eval.targets import Target
    from tunesmith.export.run import source

    final = str(trained[0].final_dir)
    with pytest.raises(ConfigError, match="no merged form"):
        source(ExportConfig(adapters=final, output=str(trained[0].run_dir / "merged")))
    with pytest.raises(ConfigError, match="benchmark the endpoint"):
        model_for(Target("reft", "adapters", final), EvalConfig(adapters=final, benchmark=["arc_easy"]))


def test_a_reft_run_is_taken_where_adapters_are_and_named_where_a_model_is_expected(trained):
    """eval --compare NAME=runs/x/final loads a reft run on its base, as an adapter run; --model runs/x/final (which
    needs a whole model) says to pass it as --adapters."""
    from tunesmith.errors import ModelNotFoundError
    from tunesmith.eval.targets import parse_spec
    from tunesmith.models.load import resolve

    final = str(trained[0].final_dir)
    assert parse_spec(final, "tuned").kind == "adapters"
    with pytest.raises(ModelNotFoundError, match=f"pass it as --adapters {final}"):
        resolve(final)


def test_reft_settings_are_refused_naming_the_key(tiny, toy):
    common = ["--model", str(tiny), "--dataset", str(toy), "--tuner", "reft"]
    cfg = load(SFTConfig, [*common, "--reft.layers", "2;10", "--reft.positions", "f3+l3", "--reft.share-weights"])
    assert cfg.reft.layers == [2, 10] and cfg.reft.positions == "f3+l3" and cfg.reft.share_weights
    recipe = tiny.parent / "reft.yaml"  # the same from YAML, as a recipe switches tuners
    recipe.write_text(f"model: {tiny}\ndataset: [{toy}]\ntuner: reft\nreft:\n  layers: [2, 10]\n  positions: f3+l3\n"
                      "  share_weights: true\n  rank: 8\n  dropout: 0.05\n")
    assert load(SFTConfig, ["-c", str(recipe)]).reft == cfg.reft.model_copy(update={"rank": 8, "dropout": 0.05})
    recipe.write_text(recipe.read_text().replace("f3+l3", "first3"))
    with pytest.raises(ConfigError, match=r"reft.yaml:6: reft.positions: not f<N>.*\(got .first3.\)"):
        load(SFTConfig, ["-c", str(recipe)])
    refused = {("--reft.positions", "middle"): "positions", ("--deepspeed", "zero2"): "one process",
               ("--adapters", "runs/x/final"): "drop --adapters"}
    for flags, words in refused.items():
        with pytest.raises(ConfigError, match=words):
            load(SFTConfig, [*common, *flags])
    with pytest.raises(ConfigError, match="reft: only read with --tuner reft"):
        load(SFTConfig, ["--model", str(tiny), "--dataset", str(toy), "--reft.rank", "8"])
    with pytest.raises(ConfigError, match="reft.layers"):  # a layer the model lacks: before training starts
        api.sft(SFTConfig(model=str(tiny), dataset=[str(toy)], tuner="reft", reft={"layers": [5]}, max_steps=1,
                          report_to=["none"], output_dir=str(tiny.parent / "bad-layers")))


@pytest.mark.parametrize("positions", ["f1+l1", "all"])
def test_the_engine_answers_concurrent_requests_as_generate_does(trained, tiny, tmp_path, positions):
    """Prompt positions need the prompt in one forward of its own: the engine sends such a model's requests through
    generate(), so concurrent requests (which continuous batching would flatten into one ragged row) each get their
    own first and last prompt tokens edited. Positions `all` edit every token, so they stay in the continuous batch.
    Edits made large, so a wrong position changes the answer."""
    import asyncio
    import shutil

    from tunesmith.infer import GenerationRequest, SamplingParams, load_engine
    from tunesmith.templates import Template

    folder = tmp_path / "final"
    shutil.copytree(trained[0].final_dir, folder)
    base = AutoModelForCausalLM.from_pretrained(tiny)
    interventions = reft.attach(base, {**SPEC, "positions": positions})
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in interventions.named_parameters():
            p.add_(3 * torch.randn_like(p) if name.endswith("source.bias") else 0)
    reft.save(base, folder, str(tiny))
    prompts = [[{"role": "user", "content": f"code for {w}"}] for w in WORDS[:3]]
    model, template = load_model(folder, torch.float32, "cpu").eval(), Template.load(folder)
    expected = []
    for messages in prompts:
        ids = torch.tensor([template.render_prompt(messages)])
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False,
                             pad_token_id=template.tokenizer.pad_token_id, eos_token_id=template.stop_token_ids)
        expected.append(template.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
    engine = load_engine("transformers", None, {"r": str(folder)}, "cpu", "auto")

    async def answer(messages):
        request = GenerationRequest(model="r", messages=messages, params=SamplingParams(max_tokens=6, temperature=0))
        deltas = [delta.text async for delta in engine.stream(request)]
        return "".join(deltas), len(deltas)

    async def all_at_once():
        return await asyncio.gather(*(answer(m) for m in prompts))

    try:
        answers = asyncio.run(all_at_once())
        assert [text for text, _ in answers] == expected
        assert all(pieces > 1 for _, pieces in answers)  # streamed as generated, not in one piece
        assert (engine.served["r"].manager is None) == (positions != "all")  # the batching loop: `all` only
    finally:
        engine.shutdown()


def test_plan_counts_the_interventions_the_run_trains(trained, tiny):
    """The pre-flight plan of a reft run counts exactly its trainable weights; `tunesmith plan --tuner reft` plans
    sft's defaults (2 interventions of rank 4 per layer) on a frozen base, which needs less than LoRA."""
    import yaml

    from tunesmith.config.plan import PlanConfig
    from tunesmith.plan.estimate import estimate_training
    from tunesmith.plan.model_shape import load_shape
    from tunesmith.plan.run import plan
    from tunesmith.plan.speed import training_setup

    resolved = yaml.safe_load((trained[0].run_dir / "config.yaml").read_text())["_resolved"]
    cfg = SFTConfig(model=str(tiny), dataset=["x"], tuner="reft", reft={"layers": [0, 1], "rank": 2}, batch_size=3)
    assert estimate_training(load_shape(str(tiny)), training_setup(cfg, "cpu", "float32", False)).trainable == \
        resolved["trainable_params"]
    planned = {t: plan(PlanConfig(model=str(tiny), tuner=t, json=True))["recommended"] for t in ("reft", "lora")}
    assert planned["reft"]["estimate"]["trainable_params"] == 2 * 2 * (2 * 64 * 4 + 4)
    assert planned["reft"]["estimate"]["total_gib"] <= planned["lora"]["estimate"]["total_gib"]


def test_plan_places_the_interventions_where_the_reft_section_says(tiny, tmp_path):
    """`plan --reft.layers 0 --reft.positions l1` (keys `plan --help` lists as sft's) planned sft's defaults, every
    layer with two groups, and printed a command without them: now the plan counts what that run would train."""
    from tunesmith.config.load import load
    from tunesmith.config.plan import PlanConfig
    from tunesmith.plan.run import plan

    flags = ["--model", str(tiny), "--tuner", "reft", "--reft.rank", "2", "--reft.layers", "0", "--reft.positions", "l1",
             "--json"]
    planned = plan(load(PlanConfig, flags))
    assert planned["recommended"]["estimate"]["trainable_params"] == 1 * 1 * (2 * 64 * 2 + 2)
    assert " --reft.rank 2 --reft.layers 0 --reft.positions l1 " in planned["command"]
    (tmp_path / "sft.yaml").write_text("tuner: reft\nreft: {layers: [1], positions: f1+l1, share_weights: true}\n")
    from_file = plan(load(PlanConfig, ["-c", str(tmp_path / "sft.yaml"), "--model", str(tiny), "--json"]))
    assert from_file["recommended"]["estimate"]["trainable_params"] == 1 * 1 * (2 * 64 * 4 + 4)
    with pytest.raises(Exception, match="reft.positions"):
        load(PlanConfig, ["--tuner", "reft", "--reft.positions", "middle"])
