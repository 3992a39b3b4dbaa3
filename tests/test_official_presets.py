"""``configs/cmr.py:official`` and ``configs/plop.py:official``: the CMR authors' code's choices
(``../shared/design/cmr_official_code.md``), each a field whose effect its own test checks
(test_cmr_collisions.py, test_cmr_selection.py, test_cmr_strategy.py, test_metrics.py,
test_strategies_distillation_losses.py); here that the presets select them, build, and leave
the defaults alone."""

from __future__ import annotations

import importlib.util
import os

import pytest

from jax_cavs.problems.cavs import strategies

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
AUTHORS_PLOP = {"pod_schedule": False, "pod_stages": "neck", "pod_pre_logits": "decoder",
                "pod_logits": "full", "adaptive_factor": False}
SAME_BY_DEFAULT = {"pod_pre_logits", "significance_share"}  # ours already agree
AUTHORS_CMR = {"score_convention": "sum", "score_classes": "seen",
               "collision_unit": "video_pair", "significance": "fixed",
               "significance_share": 0.7, "memory_pseudo_labels": "overwrite"}


def load(name: str, arg: str | None):
    spec = importlib.util.spec_from_file_location(f"preset_{name}",
                                                  os.path.join(CONFIGS, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def built(config):
    hparams = {k: v for k, v in config.strategy.items() if k != "name"}
    return strategies.get_strategy(config.strategy.name, hparams)


@pytest.mark.parametrize("name, expected", [("plop", AUTHORS_PLOP),
                                            ("cmr", {**AUTHORS_PLOP, **AUTHORS_CMR})])
def test_official_selects_the_authors_code(name, expected):
    default, official = load(name, None), load(name, "official")
    strategy = built(official)
    for field, value in expected.items():
        assert getattr(strategy, field) == value, field
        if field not in SAME_BY_DEFAULT:
            assert getattr(built(default), field) != value, field
    assert official.eval.absent_classes == "zero" and default.eval.absent_classes == "exclude"
    # SynthAVS keeps our learning rates; only the strategy and the metric change.
    assert official.optimizer.to_dict() == default.optimizer.to_dict()
    assert official.train.to_dict() == default.train.to_dict()


@pytest.mark.parametrize("name", ["plop", "cmr"])
def test_official_on_avsbench_trains_as_their_scripts(name):
    default, official = load(name, "avsbench"), load(name, "avsbench,official")
    assert (official.optimizer.lr, official.optimizer.lr_incremental) == (1e-4, 1e-4)
    assert official.train.batch_size == 4
    assert (default.optimizer.lr, default.optimizer.lr_incremental) == (1e-4, 1e-5)
    built(official)
    runlocal = load(name, "avsbench,runlocal,official")  # the CPU variant keeps its rates
    assert runlocal.optimizer.to_dict() == load(name, "avsbench,runlocal").optimizer.to_dict()
