"""The expression known-answer experiment, small: a normal prior trained on Suzanne ("neutral") and on
Suzanne with an opened jaw ("open mouth") must make the joint geometry stage's "open mouth" shape
key open the jaw, while neutral stays at Suzanne; a prior that never saw the expression rows
(the geometry test's trained prior: same settings, neutral renders only) must not.

Production code throughout: bpy target, engine.render, build-prior-dataset (two heads),
train-prior (the expression branch is in the LoRA's default targets), fit_sdf_to_views for the
neutral start, the pipeline's GeometryStage with an expression, engine.export.write_result, and
the shape key read back from head.npz with numpy. bench/bench_known_answer_expression.py is the
full-size version (docs/known-answer.md).
"""

from __future__ import annotations

import pytest

import known_answer as ka  # (tests/experiments/conftest.py puts bench/ on the path)
import known_answer_expression as kx


@pytest.fixture(scope="module")
def expression_result(tmp_path_factory, known_answer_base, geometry_prior):
    config = kx.QUICK
    control = geometry_prior(config) / "lora_normal"  # the geometry test's prior: the neutral rows alone
    result = kx.run_expression_experiment(tmp_path_factory.mktemp("known-answer-expression"), config,
                                          models=known_answer_base(config), control_lora=control, log=print)
    print(_figures(result))  # the log and figures show with -rA and on failure
    return result


def _figures(result) -> str:
    c = result.chamfer
    return (f"deformation {result.deformation_chamfer:.4f} m; Chamfer (m) neutral / expression: " +
            ", ".join(f"{k} {v['neutral']:.4f} / {v['expression']:.4f}" for k, v in c.items()) +
            f"; largest offsets {result.offset_max_m}; train eval loss "
            f"{[result.training['trained']['eval_loss_start'], result.training['trained']['eval_loss_end']]}")


def test_the_shape_key_opens_the_jaw_it_was_trained_on(expression_result):
    r, figures = expression_result, _figures(expression_result)
    c = r.chamfer
    # The start is the neutral target with a fresh expression model: its "open mouth" is neutral,
    # as far from the opened jaw as the deformation itself.
    assert c["start"]["expression"] > 0.8 * r.deformation_chamfer, figures
    # The exported shape key moved the neutral head most of the way to the opened jaw ...
    assert c["trained"]["expression"] < kx.QUICK_MAX_EXPRESSION_OVER_START * c["start"]["expression"], figures
    # ... by its offsets, not by the neutral shape drifting there ...
    assert c["trained"]["expression"] < kx.QUICK_MAX_EXPRESSION_OVER_NEUTRAL * c["trained"]["neutral_to_deformed"], \
        figures
    # ... and clearly closer than the prior that never saw the expression rows, from the same start.
    assert c["trained"]["expression"] < kx.QUICK_MAX_EXPRESSION_OVER_CONTROL * c["control"]["expression"], figures


def test_neutral_stays_at_the_neutral_target(expression_result):
    c = expression_result.chamfer
    assert c["trained"]["neutral"] < kx.QUICK_MAX_NEUTRAL_OVER_START * c["start"]["neutral"], \
        _figures(expression_result)
