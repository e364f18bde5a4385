"""--adapters trains an adapter further as it is: its rank, alpha and kind are the adapter's, a differing lora setting
given is refused by name, and config.yaml records the adapter's values instead of defaults it never had."""

import pytest

from tunesmith.config import SFTConfig, load
from tunesmith.errors import ConfigError
from tunesmith.train.preflight import load_template


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tiny import make_tiny_model

    folder = tmp_path_factory.mktemp("adapter")
    base = make_tiny_model(folder / "tiny")
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    model.save_pretrained(folder / "final")
    AutoTokenizer.from_pretrained(base).save_pretrained(folder / "final")
    return base, folder / "final"


def config(adapter, *flags):
    base, final = adapter
    return load(SFTConfig, ["--model", str(base), "--dataset", "x.jsonl", "--adapters", str(final), *flags])


def test_the_adapters_rank_and_alpha_are_recorded_not_the_defaults(adapter):
    cfg = config(adapter)
    load_template(cfg)
    assert (cfg.lora.rank, cfg.lora.alpha) == (4, 8)


@pytest.mark.parametrize("flags, named", [
    (["--lora.rank", "16"], "lora.rank: 16 given, but the adapter"),
    (["--lora.alpha", "64"], "lora.alpha: 64 given"),
    (["--lora.targets", "q_proj,k_proj,v_proj"], "lora.targets: q_proj, k_proj, v_proj given"),
    (["--tuner", "dora"], "tuner: dora given, but"),
])
def test_a_differing_lora_setting_is_refused_by_name(adapter, flags, named):
    with pytest.raises(ConfigError, match=named):
        load_template(config(adapter, *flags))


def test_the_adapters_own_values_given_again_are_fine(adapter):
    cfg = config(adapter, "--lora.rank", "4", "--lora.targets", "v_proj,q_proj", "--tuner", "lora")
    load_template(cfg)
    assert cfg.lora.rank == 4


def test_a_rank_given_again_leaves_the_adapters_own_alpha(adapter, tmp_path):
    """alpha follows a given rank (2 x) only until it is known: the adapter's alpha (here 8 x rank) is kept, not
    refused as if --lora.alpha had been given."""
    import json
    import shutil

    base, final = adapter
    mine = tmp_path / "final"
    shutil.copytree(final, mine)
    record = json.loads((mine / "adapter_config.json").read_text())
    (mine / "adapter_config.json").write_text(json.dumps({**record, "lora_alpha": 32}))
    cfg = config((base, mine), "--lora.rank", "4")
    load_template(cfg)
    assert (cfg.lora.rank, cfg.lora.alpha) == (4, 32)
