"""The known-answer experiment, small: SDS with a normal prior trained on renders of Suzanne must end
closer to Suzanne than the start and clearly closer than SDS with the untrained prior, from the same
start with the same seed and steps.

Everything runs through the production code (bpy target, engine.render, build-prior-dataset,
train-prior on the tiny models, the SDS geometry loop, Chamfer); bench/bench_known_answer.py is the
full-size version (docs/known-answer.md). About 3 minutes on 2 quiet cores (11 min measured with
the machine shared by eight jobs).
"""

from __future__ import annotations

import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import pytest  # noqa: E402

import known_answer as ka  # noqa: E402  (the experiment's helpers live beside the benchmark)


# Passed on main up to 4d5242d (trained 0.0265 vs control 0.0291); after main's rasteriser and
# sdf_field changes and the new DMTet deformation bound (0.28 cells, was 0.5 here) it measured, on
# seed 0 at the quick settings: start 0.0272, trained 0.0285, control 0.0282, trained with views
# rotated 180 deg 0.0265 (more SDS steps with lr 2e-3: trained 0.0310, control 0.0281). The trained
# prior no longer pulls the head to Suzanne; see docs/known-answer.md. Slow: ~6 min on 2 quiet cores.
@pytest.mark.slow
@pytest.mark.xfail(reason="known-answer effect lost after main's rasteriser/sdf_field/deformation-bound changes: "
                          "quick run start 0.0272, trained 0.0285, control 0.0282, views rotated 0.0265 "
                          "(docs/known-answer.md)", raises=AssertionError, strict=False)
def test_trained_prior_pulls_the_head_to_the_shape_it_learnt(tmp_path):
    result = ka.run_experiment(tmp_path, ka.QUICK, log=lambda _line: None)
    s = result.summary()
    figures = (f"Chamfer (m) start {s['chamfer_start_m']:.4f}, trained {s['chamfer_trained_m']:.4f}, "
               f"control {s['chamfer_control_m']:.4f}, views rotated {s['chamfer_views_rotated_m']:.4f}; train eval loss {s['train_eval_loss']}")
    # The trainer learnt something about the data at all.
    assert result.training["eval_loss_end"] < 0.7 * result.training["eval_loss_start"], figures
    # SDS with the trained prior did not move the surface away from the target ...
    assert result.chamfer_trained < ka.QUICK_MAX_TRAINED_OVER_START * result.chamfer_start, figures
    # ... and ended clearly closer to it than the untrained prior from the same start, seed and
    # steps (which drifts away). Measured on 2 cores: trained/control 0.91 (docs/known-answer.md).
    assert result.chamfer_trained < ka.QUICK_MAX_TRAINED_OVER_CONTROL * result.chamfer_control, figures
    # View conditioning carries information: the same trained prior, told the opposite view for
    # every camera (azimuth + 180 deg), must end farther from the target. Without this, a prior
    # that ignored the view text would pass (removing all view text did, before this check).
    assert result.chamfer_trained < ka.QUICK_MAX_TRAINED_OVER_ROTATED * result.chamfer_views_rotated, figures
