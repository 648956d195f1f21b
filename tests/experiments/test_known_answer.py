"""The known-answer experiment, small: SDS with a normal prior trained on renders of Suzanne must end
closer to Suzanne than the start and clearly closer than SDS with the untrained prior, from the same
start with the same seed and steps.

Everything runs through the production code (bpy target, engine.render, build-prior-dataset,
train-prior on the tiny models, the SDS geometry loop, Chamfer); bench/bench_known_answer.py is the
full-size version (docs/known-answer.md). One experiment (three SDS runs) is shared by both tests:
about 4 minutes on 2 quiet cores, 6-7 with the machine shared, so it is marked slow
(`pytest tests/experiments -m slow`).
"""

from __future__ import annotations

import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import pytest  # noqa: E402

import known_answer as ka  # noqa: E402  (the experiment's helpers live beside the benchmark)


@pytest.fixture(scope="module")
def quick_result(tmp_path_factory):
    return ka.run_experiment(tmp_path_factory.mktemp("known-answer"), ka.QUICK, log=lambda _line: None)


def _figures(result) -> str:
    s = result.summary()
    return (f"Chamfer (m) start {s['chamfer_start_m']:.4f}, trained {s['chamfer_trained_m']:.4f}, "
            f"control {s['chamfer_control_m']:.4f}, views rotated {s['chamfer_views_rotated_m']:.4f}; "
            f"train eval loss {s['train_eval_loss']}")


@pytest.mark.slow
def test_trained_prior_pulls_the_head_to_the_shape_it_learnt(quick_result):
    result, figures = quick_result, _figures(quick_result)
    # The trainer learnt something about the data at all.
    assert result.training["eval_loss_end"] < 0.7 * result.training["eval_loss_start"], figures
    # SDS with the trained prior moved the surface towards the target ...
    assert result.chamfer_trained < ka.QUICK_MAX_TRAINED_OVER_START * result.chamfer_start, figures
    # ... and ended clearly closer to it than the untrained prior from the same start, seed and
    # steps (which drifts away). Measured on seed 0: start 0.0272, trained 0.0255, control 0.0478.
    assert result.chamfer_trained < ka.QUICK_MAX_TRAINED_OVER_CONTROL * result.chamfer_control, figures


# A check that can fail when view conditioning is broken: the same trained prior, told the opposite
# view for every camera (azimuth + 180 deg), must end farther from the target. A prior that ignored
# the view text would give the very same run (same seed), so this fails. It does not hold today:
# measured on seed 0, trained 0.0255, views rotated 0.0247 -- on this tiny prior the view text does
# not help SDS (docs/known-answer.md), so it is an expected failure, kept to say so.
@pytest.mark.slow
@pytest.mark.xfail(reason="view text does not help SDS on the tiny prior: quick run trained 0.0255 vs views "
                          "rotated 180 deg 0.0247 (docs/known-answer.md)", raises=AssertionError, strict=False)
def test_true_view_text_beats_the_opposite_view(quick_result):
    assert quick_result.chamfer_trained < ka.QUICK_MAX_TRAINED_OVER_ROTATED * quick_result.chamfer_views_rotated, \
        _figures(quick_result)
