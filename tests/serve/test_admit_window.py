"""deploy --admit-window-ms N: requests arriving while the batch decodes wait up to N ms and join it together
(infer/admission.py); one arriving at an idle batch joins at once. The answers are the ones each request gets
without the window."""

import asyncio

import pytest
from pydantic import ValidationError
from tiny import make_tiny_model, untie_head

from tunesmith.config import DeployConfig
from tunesmith.infer.admission import Admission
from tunesmith.infer.types import GenerationRequest, SamplingParams
from tunesmith.serve.app import engine_options

WINDOW_S = 0.2


async def passes(admission: Admission, busy: bool, arrive_s: float, times: list[float]) -> None:
    loop = asyncio.get_running_loop()
    await asyncio.sleep(arrive_s)
    await admission.wait(busy)
    times.append(loop.time())


def test_arrivals_at_a_busy_batch_pass_together_after_the_window_and_an_idle_batch_waits_for_nothing():
    async def scenario() -> tuple[float, list[float], list[float]]:
        admission, busy, idle = Admission(WINDOW_S), [], []
        start = asyncio.get_running_loop().time()
        await asyncio.gather(*[passes(admission, True, arrive, busy) for arrive in (0.0, 0.03, 0.06)],
                             passes(Admission(WINDOW_S), False, 0.0, idle))
        return start, busy, idle

    start, busy, idle = asyncio.run(scenario())
    assert idle[0] - start < WINDOW_S / 2  # idle: joined at once
    assert min(busy) - start >= WINDOW_S * 0.95  # the first arrival opened the gate and waited it out
    assert max(busy) - min(busy) < WINDOW_S / 4  # the later arrivals passed with it, not a window each


def test_a_waiter_that_leaves_does_not_close_the_gate_for_the_others():
    async def scenario() -> list[float]:
        admission, times = Admission(WINDOW_S), []
        leaving = asyncio.ensure_future(passes(admission, True, 0.0, times))
        staying = asyncio.ensure_future(passes(admission, True, 0.01, times))
        await asyncio.sleep(0.05)
        leaving.cancel()
        await staying
        return times

    assert len(asyncio.run(scenario())) == 1


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    from tunesmith.infer import load_engine

    model = untie_head(make_tiny_model(tmp_path_factory.mktemp("admit") / "tiny-untied"))
    engine = load_engine("transformers", model=str(model), device="cpu", dtype="float32")
    assert engine.loops.admit_window_s == 0  # unset: a window on CUDA only, where it was measured to pay
    yield engine
    asyncio.run(engine.close())


def test_requests_joining_a_decoding_batch_in_the_window_answer_as_without_it(engine):
    """One long answer keeps the batch busy; three requests arriving during it join together after the window."""
    prompts = ["Write about rivers.", "Name three towns.", "Say hello twice.", "Count to five."]

    def request(text: str, max_tokens: int) -> GenerationRequest:
        return GenerationRequest(messages=[{"role": "user", "content": text}],
                                 params=SamplingParams(max_tokens=max_tokens, temperature=0.0))

    async def answer(text: str, max_tokens: int, after_s: float) -> str:
        await asyncio.sleep(after_s)
        return "".join([delta.text async for delta in engine.stream(request(text, max_tokens))])

    async def together(window_ms: float) -> tuple[list[str], list[float]]:
        engine.loops.admit_window_s, joins = window_ms / 1000, []
        engine.loops.admissions.clear()
        manager = engine.loops.manager(engine.served[engine.default])
        add = manager.add_request

        def timed_add(*args, **kwargs):
            joins.append(asyncio.get_running_loop().time())
            return add(*args, **kwargs)

        manager.add_request = timed_add
        try:
            answers = await asyncio.gather(answer(prompts[0], 96, 0.0),
                                           *[answer(p, 12, 0.05 + 0.02 * i) for i, p in enumerate(prompts[1:])])
        finally:
            del manager.add_request
        return answers, joins

    plain, _ = asyncio.run(together(0))
    gathered, joins = asyncio.run(together(500))
    assert gathered == plain and all(plain)
    later = sorted(joins)[1:]  # the first request found the batch idle
    assert later[0] - joins[0] >= 0.5 and later[-1] - later[0] < 0.1


def test_deploy_hands_the_window_to_the_transformers_engine_and_refuses_it_for_vllm():
    assert engine_options(DeployConfig(admit_window_ms=8)) == {"admit_window_ms": 8}
    assert engine_options(DeployConfig(admit_window_ms=0)) == {"admit_window_ms": 0}  # off, also on CUDA
    assert engine_options(DeployConfig()) == {}  # the engine picks by device
    with pytest.raises(ValidationError, match="admit_window_ms: .*vllm"):
        DeployConfig(backend="vllm", admit_window_ms=8)
