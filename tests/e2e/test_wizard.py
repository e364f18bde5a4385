"""Bare `tunesmith` driven in a pseudo-terminal: fine-tune with the CPU defaults, then chat with the result."""

import os
from pathlib import Path

import pytest

from conftest import TUNESMITH

DOWN, ENTER = "\x1b[B", "\r"


@pytest.mark.slow
def test_wizard_fine_tunes_on_cpu_and_chats_with_the_result(tmp_path):
    pexpect = pytest.importorskip("pexpect")
    # PROMPT_TOOLKIT_NO_CPR: a pty answers no cursor-position queries; without it the first keys can be lost.
    env = {**os.environ, "TERM": "xterm-256color", "TOKENIZERS_PARALLELISM": "false", "CUDA_VISIBLE_DEVICES": "",
           "PROMPT_TOOLKIT_NO_CPR": "1"}
    child = pexpect.spawn(TUNESMITH, cwd=str(tmp_path), env=env, encoding="utf-8", timeout=600, dimensions=(40, 160))
    child.expect("hardware found")
    child.expect("What do you want to do")
    child.expect("Quit")  # the whole menu is drawn: keys are read from here on
    child.send(ENTER)  # Fine-tune a model on my data
    child.expect("Which model")
    child.expect("another")
    child.send(ENTER)  # the embedded default
    child.expect("Which data")
    child.expect("my own file")
    child.send(DOWN + ENTER)  # self-cognition: short rows keep this test fast
    child.expect("good rows")  # the data check ran first
    child.expect("How long")
    child.expect("thorough")
    child.send(ENTER)  # quick
    child.expect("plan:.*fits")  # the memory plan chose the settings
    child.expect(r"\$ tunesmith sft --model smollm2-135m-instruct --dataset self-cognition --method lora")
    child.expect("Done.", timeout=900)
    child.expect("Next")
    child.expect("Done")
    child.send(ENTER)  # Chat with it
    child.expect(">>> ")
    child.sendline("Who are you?")
    child.expect(">>> ")
    answer = child.before.strip()
    child.sendline("/exit")
    child.expect("Next")
    child.expect("Done")
    child.send(DOWN + DOWN + ENTER)  # Done
    child.expect("What do you want to do")
    child.expect("Quit")
    child.send(DOWN * 6 + ENTER)  # Quit, the seventh entry
    child.expect(pexpect.EOF)
    runs = list(Path(tmp_path, "runs").glob("wizard-*"))
    assert len(runs) == 1 and (runs[0] / "final" / "adapter_model.safetensors").exists()
    assert (runs[0] / "command.txt").read_text().startswith("tunesmith sft --model smollm2-135m-instruct")
    assert answer, "the chat printed no answer"
