"""The DAO proposal drafter recipe (examples/dao-proposal/): its data loads and has the five sections with a
well-formed citation, its generators are reproducible, its two rewards tell good drafts from bad ones, its YAML
files load into their configs, and its second round (a quarter's votes -> accepted proposals and DPO pairs) trains on
only what round 1 never saw, from round 1's weights."""

import importlib.util
import itertools
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tunesmith.config import SFTConfig, load
from tunesmith.config.rlhf import RLHFConfig
from tunesmith.data.load import load_rows

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "dao-proposal"
SECTIONS = ("Title", "Background", "Data cited", "Budget", "Vote options")
TX = "0x" + "ab12" * 16  # 64 hex digits
ADDRESS = "0x" + "c0ffee00" * 5  # 40 hex digits


def _import(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


rewards = _import("dao_recipe_rewards", EXAMPLE / "rewards.py")


def draft(citations: str) -> str:
    return (f"## Title\nFund an audit\n\n## Background\nThe bridge was last audited a year ago.\n\n"
            f"## Data cited\n{citations}\n\n## Budget\n- 40,000 USDC, 50% at kickoff\n\n"
            f"## Vote options\n- For\n- Against\n- Abstain")


# -----------------------------------------------------------------------------
# Data


def test_every_sft_row_loads_and_has_the_five_sections_and_a_citation():
    data = load_rows(["dao-proposals"], kind="sft")
    assert not data.problems and len(data.rows) >= 200
    heading = re.compile(r"^## (.+)$", re.MULTILINE)
    for row in data.rows:
        answer = row.messages[-1]["content"]
        assert tuple(heading.findall(answer)) == SECTIONS, f"line {row.line}"
        cited = rewards.data_cited_section(answer)
        assert rewards.citations(cited) >= (1, 0), f"line {row.line}: no well-formed citation under Data cited"


def test_prompt_files_are_user_turns_with_the_reward_columns():
    for name, least in (("prompts.jsonl", 40), ("eval_prompts.jsonl", 12)):
        data = load_rows([str(EXAMPLE / name)], kind="prompts")
        assert not data.problems and len(data.rows) >= least
        for row in data.rows:
            assert row.messages[-1]["role"] == "user"
            assert {"dao", "budget_cap", "explorer"} <= row.extra.keys()
    sft = {json.loads(line)["messages"][-2]["content"]
           for line in (ROOT / "tunesmith/data/shipped/dao_proposals.jsonl").read_text().splitlines()}
    held_out = {json.loads(line)["dao"] for line in (EXAMPLE / "eval_prompts.jsonl").read_text().splitlines()}
    assert not any(dao in text for dao in held_out for text in sft)  # eval DAOs never appear in training


def test_generators_are_deterministic(tmp_path):
    # Run copies of the scripts in a scratch tree, so the shipped files are only read, never rewritten.
    folder = tmp_path / "examples" / "dao-proposal"
    folder.mkdir(parents=True)
    (tmp_path / "tunesmith" / "data" / "shipped").mkdir(parents=True)
    for script in ("make_dataset.py", "make_round2.py"):
        (folder / script).write_text((EXAMPLE / script).read_text())
        subprocess.run([sys.executable, str(folder / script)], check=True, capture_output=True)
    for made in ("tunesmith/data/shipped/dao_proposals.jsonl", "examples/dao-proposal/prompts.jsonl",
                 "examples/dao-proposal/eval_prompts.jsonl", "examples/dao-proposal/round2/votes.jsonl",
                 "examples/dao-proposal/round2/accepted.jsonl", "examples/dao-proposal/round2/pairs.jsonl"):
        assert (tmp_path / made).read_bytes() == (ROOT / made).read_bytes(), made


# -----------------------------------------------------------------------------
# data_citation_score


@pytest.mark.parametrize("citation", [
    f"- Previous audit payment: {TX}",
    f"- Previous audit payment: https://etherscan.io/tx/{TX}",
    f"- Bridge contract: https://arbiscan.io/address/{ADDRESS}.",
])
def test_citation_score_is_one_for_a_well_formed_citation(citation):
    assert rewards.data_citation_score([draft(citation)]) == [1.0]


@pytest.mark.parametrize("bad", [
    f"- Previous audit payment: {TX[:-1]}",  # 63 hex digits
    f"- Previous audit payment: {TX[:-1]}g",  # not hex
    f"- Previous audit payment: https://etherscan.io/tx/{TX[:-1]}",
    f"- Previous audit payment: https://chainviewer.example/tx/{TX}",  # unknown host
    f"- Bridge contract: https://arbiscan.io/address/{ADDRESS}ff",  # 42 digits after /address/
])
def test_citation_score_is_lower_for_a_malformed_one(bad):
    good = f"- Treasury: https://etherscan.io/address/{ADDRESS}"
    assert rewards.data_citation_score([draft(bad)]) == [0.0]  # only malformed: no credit, not even the section's
    mixed = rewards.citation_score(draft(good + "\n" + bad))
    assert mixed == 0.5  # one of two citations well-formed


def test_citation_score_partial_for_a_section_without_citations_and_zero_with_none():
    section_only = draft("- The treasury report from last quarter")
    nothing = "We propose to fund an audit of the bridge for 40,000 USDC. Vote For or Against."
    assert rewards.data_citation_score([section_only, nothing]) == [rewards.SECTION_ONLY, 0.0]
    assert 0 < rewards.SECTION_ONLY < 1
    # a well-formed hash outside any Data cited section is worth less than one inside it
    assert rewards.citation_score(f"See {TX}.") == rewards.OUTSIDE_SECTION < 1.0


def test_citation_score_ignores_short_hex_and_plain_links():
    text = draft(f"- Transfer selector 0xa9059cbb, forum thread https://forum.example.org/t/123, tx {TX}")
    assert rewards.citation_score(text) == 1.0


# -----------------------------------------------------------------------------
# tone_neutrality

NEUTRAL = ("The bridge contracts were last audited fourteen months ago. Since then 23 pull requests have changed "
           "them. This proposal funds a four-week review by an external firm, paid in three milestones.")
INFLAMMATORY = ("Everyone knows the last audit was a SCAM BY THE SAME CLOWNS!!! Only a fool would vote against "
                "this, it is obviously a no-brainer.")


def test_tone_scores_a_neutral_paragraph_above_an_inflammatory_one():
    neutral, inflammatory = rewards.tone_neutrality([NEUTRAL, INFLAMMATORY])
    assert neutral == 1.0
    assert 0.0 < inflammatory < 0.2
    assert all(0.0 <= s <= 1.0 for s in (neutral, inflammatory))


@pytest.mark.parametrize("text", [
    "The committee is incompetent.",  # insult
    "This plan is ABSOLUTELY necessary.",  # one long word in capitals
    "Vote for this now!!",  # exclamation run
    "Everybody knows the fee is too high.",  # absolute
])
def test_each_kind_of_loaded_wording_costs(text):
    assert rewards.tone_score(text) < 1.0


def test_tickers_acronyms_and_hashes_are_not_shouting():
    text = f"The DAO pays 40,000 USDC via a TWAP to the ETH/USDC pool, see {TX}."
    assert rewards.tone_score(text) == 1.0
    assert rewards.tone_score("   ") == 0.0  # an empty answer is not the neutral optimum


def test_rewards_are_registered_by_name():
    from tunesmith.train.rewards.registry import known_rewards

    assert {"data_citation_score", "tone_neutrality"} <= set(known_rewards())


# -----------------------------------------------------------------------------
# Configs


def test_yaml_files_load_into_their_configs(monkeypatch):
    monkeypatch.chdir(ROOT)
    sft = load(SFTConfig, ["-c", str(EXAMPLE / "sft.yaml")])
    assert sft.dataset == ["dao-proposals"] and sft.model == "smollm2-135m-instruct" and sft.tuner == "lora"
    grpo = load(RLHFConfig, ["-c", str(EXAMPLE / "grpo.yaml")])
    assert grpo.method == "grpo" and grpo.adapters == "runs/dao-sft/final"
    assert grpo.rewards.funcs == ["data_citation_score", "tone_neutrality", "format"]
    assert grpo.rewards.plugin == ["examples/dao-proposal/rewards.py"]
    # the format reward's pattern accepts every SFT answer, so a drafter that learned the data starts at 1.0
    pattern = re.compile(grpo.rewards.format_pattern, re.DOTALL)
    rows = load_rows(sft.dataset, kind="sft").rows
    assert all(pattern.fullmatch(r.messages[-1]["content"].strip()) for r in rows)
    assert not pattern.fullmatch(draft(f"- {TX}").replace("## Budget", "## Costs"))
    sft2 = load(SFTConfig, ["-c", str(EXAMPLE / "sft-round2.yaml")])
    assert sft2.continue_from == "runs/dao-sft" and sft2.replay == 0.1 and "dao-proposals" in sft2.dataset
    dpo2 = load(RLHFConfig, ["-c", str(EXAMPLE / "dpo-round2.yaml")])
    assert dpo2.method == "dpo" and dpo2.continue_from == sft2.output_dir


# -----------------------------------------------------------------------------
# Round 2: a quarter's votes -> accepted proposals (SFT) and accepted-over-rejected pairs (DPO)


@pytest.fixture(scope="module")
def round2():
    return _import("dao_recipe_round2", EXAMPLE / "make_round2.py")


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_votes_become_sft_rows_and_pairs_whose_rejected_draft_shows_its_objection(round2):
    votes = read_jsonl(EXAMPLE / "round2" / "votes.jsonl")
    sft, pairs = round2.training_data(votes)
    assert sft == read_jsonl(EXAMPLE / "round2" / "accepted.jsonl") and len(sft) == 24
    assert pairs == read_jsonl(EXAMPLE / "round2" / "pairs.jsonl") and len(pairs) == 18
    round1 = {json.loads(line)["messages"][-2]["content"]
              for line in (ROOT / "tunesmith/data/shipped/dao_proposals.jsonl").read_text().splitlines()}
    assert not round1 & {p["prompt"] for p in pairs}  # new requests, not round 1's
    objection = {v["proposal"]: v["objection"] for v in votes if v["outcome"] == "rejected"}
    for pair in pairs:
        chosen, rejected, why = pair["chosen"], pair["rejected"], objection[pair["rejected"]]
        assert rewards.citation_score(chosen) == 1.0 and rewards.tone_score(chosen) == 1.0
        if why.startswith("no on-chain source"):
            assert rewards.citation_score(rejected) == rewards.SECTION_ONLY
        elif "link" in why:
            assert rewards.citation_score(rejected) == 0.0
        elif "tone" in why:
            assert rewards.tone_score(rejected) < 0.5
        elif "cap of" in why:
            assert "Contingency" in rejected and "Contingency" not in chosen
        else:  # a ballot with no way to vote no
            assert "- Against" in chosen or "Option C" in chosen
            assert "- Against" not in rejected and "Option C" not in rejected


def test_pairs_match_by_request(round2):
    vote = {"proposal": "", "outcome": "rejected"}
    votes = [{**vote, "request": "a", "proposal": "a1"}, {**vote, "request": "a", "proposal": "a2", "outcome": "accepted"},
             {**vote, "request": "a", "proposal": "a3", "outcome": "accepted"},  # the last accepted one is chosen
             {**vote, "request": "b", "proposal": "b1"}]  # voted down, never revised: nothing to prefer
    sft, pairs = round2.training_data(votes)
    assert pairs == [{"prompt": "a", "chosen": "a3", "rejected": "a1"}]
    assert [row["messages"][-1]["content"] for row in sft] == ["a2", "a3"]


@pytest.mark.parametrize("line, message", [
    ('{"request": "a", "proposal": "x", "outcome": "passed"}', "1: outcome: 'passed'; expected accepted or rejected"),
    ('{"request": "a", "outcome": "accepted"}', "1: proposal: missing or empty"),
    ("not json", "1: not a JSON object"),
])
def test_a_bad_vote_record_is_named_by_line_and_field(round2, tmp_path, line, message):
    record = tmp_path / "votes.jsonl"
    record.write_text(line + "\n")
    with pytest.raises(SystemExit, match=re.escape(f"{record}:{message}")):
        round2.read_votes(record)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("dao-round2") / "tiny")


def test_round_two_trains_on_only_what_round_one_never_saw_from_its_weights(tiny_model, tmp_path, monkeypatch):
    """The recipe's three YAML files as shipped (tiny model, one pass in steps of 8): sft.yaml, then sft-round2.yaml
    skips the 216 rows round 1 saw, trains the 24 accepted proposals plus 3 replayed rows, and dpo-round2.yaml
    trains 2 of the 18 pairs, each from the run before's adapter."""
    from safetensors.torch import load_file

    from tunesmith import api
    from tunesmith.data.rows import content_hash
    from tunesmith.errors import DataError
    from tunesmith.train.continued import Continuation

    monkeypatch.chdir(ROOT)  # the YAML files name the recipe's data relative to the repository
    monkeypatch.setattr("tunesmith.train.callbacks.plot_loss", lambda run_dir: None)  # no loss.png: nothing reads it
    # one whole pass each, so every row counts as seen (a run stopped mid-epoch records none of its own)
    one_pass = ["--epochs", "1", "--max-steps", "-1", "--batch-size", "8", "--grad-accum", "1", "--report-to", "none"]
    # each SFT row's last 16 tokens (its answer's end and end-of-turn): a pass over 216 rows is quick; which rows
    # train, and from which weights, is what this test is about
    cheap = ["--max-length", "16", "--truncation", "left"]
    # DPO on 2 of the 18 pairs (NAME#2: drawn with the seed): each pair scores ~900 positions through the 49k-word
    # head, for policy and reference, and cutting the answers would cut their end-of-turn tokens; the chain is tested
    pairs_spec, drawn = f"{EXAMPLE / 'round2/pairs.jsonl'}#2", 2
    a, b, c = tmp_path / "dao-sft", tmp_path / "dao-sft-r2", tmp_path / "dao-dpo-r2"
    api.sft(load(SFTConfig, ["-c", str(EXAMPLE / "sft.yaml"), "--model", str(tiny_model), "--output-dir", str(a),
                             "--learning-rate", "1e-2", "--warmup-ratio", "0", *one_pass, *cheap]))
    # a learning rate of ~0 in round 2: the adapters it writes are the ones it started from
    api.sft(load(SFTConfig, ["-c", str(EXAMPLE / "sft-round2.yaml"), "--continue-from", str(a), "--output-dir", str(b),
                             "--learning-rate", "1e-12", *one_pass, *cheap]))
    api.rlhf(load(RLHFConfig, ["-c", str(EXAMPLE / "dpo-round2.yaml"), "--continue-from", str(b), "--output-dir",
                               str(c), "--dataset", pairs_spec, "--learning-rate", "1e-12", *one_pass]))

    def seen(run):
        return set(json.loads((run / "seen_rows.json").read_text())["rows"])

    def resolved(run):
        return yaml.safe_load((run / "config.yaml").read_text())

    accepted = {content_hash(r) for r in load_rows([str(EXAMPLE / "round2/accepted.jsonl")], kind="sft").rows}
    pairs = load_rows([pairs_spec], kind="preference").rows
    assert len(seen(a)) == 216
    b_record = resolved(b)["_resolved"]
    assert b_record["continued"] == {"from": str(a), "seen_before": 216, "skipped_seen": 216, "new_rows": 24,
                                     "replayed": math.ceil(0.1 * 24), "replay": 0.1}
    assert b_record["train_rows"] == 24 + 3
    assert seen(b) == seen(a) | accepted  # every new row trained, nothing of round 1's beyond the replay
    c_config = resolved(c)
    assert c_config["_resolved"]["continued"]["new_rows"] == drawn and c_config["_resolved"]["train_pairs"] == drawn
    assert seen(c) == seen(b) | {content_hash(p) for p in pairs}
    assert c_config["model"] == str(tiny_model)  # the base is found through the chain, not the default model

    weights = [load_file(run / "final" / "adapter_model.safetensors") for run in (a, b, c)]
    lora_b = [k for k in weights[0] if "lora_B" in k]
    assert lora_b and any(weights[0][k].abs().max() > 0 for k in lora_b)  # round 1 moved them off their zero init
    for before, after in itertools.pairwise(weights):
        assert before.keys() == after.keys()
        assert all((before[k] - after[k]).abs().max() < 1e-6 for k in before)  # each run began where the last ended

    first = json.loads((c / "metrics.jsonl").read_text().splitlines()[0])
    assert first["rewards/chosen"] == first["rewards/rejected"] == 0.0  # the reference is the drafter it starts from

    # the next quarter, on the same pairs: nothing is new
    nxt = load(RLHFConfig, ["-c", str(EXAMPLE / "dpo-round2.yaml"), "--continue-from", str(c), "--dataset",
                            pairs_spec])
    with pytest.raises(DataError, match=f"all {drawn} rows were seen"):
        Continuation.select(nxt, pairs, lambda names: load_rows(names, kind="preference"))
