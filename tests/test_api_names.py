"""`from tunesmith import infer` (export, plan) is the API function whatever was imported before: the packages of the
same names bind over it once any of their modules loads (tunesmith/api_package.py)."""

import subprocess
import sys

import pytest

A_MODULE_OF = {"infer": "tunesmith.infer.batch", "export": "tunesmith.export.run", "plan": "tunesmith.plan.estimate"}


@pytest.mark.parametrize("name", sorted(A_MODULE_OF))
def test_api_function_survives_importing_its_package(name):
    # a fresh interpreter: this test process has long imported the packages
    code = f"import {A_MODULE_OF[name]}\nfrom tunesmith import {name}\nassert callable({name}), {name}\n"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_plan_answers_through_the_package_as_through_the_api():
    import tunesmith
    import tunesmith.plan.estimate  # noqa: F401  binds tunesmith.plan to the package
    from tunesmith import PlanConfig, api

    cfg = PlanConfig(model="smollm2-135m-instruct", gpu_memory=24.0)
    assert tunesmith.plan(cfg) == api.plan(cfg)
