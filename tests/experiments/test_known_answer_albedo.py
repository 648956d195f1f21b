"""The albedo known-answer experiment, small: an albedo prior trained on unlit renders of a known
texture on the procedural head must make the pipeline's texture stage paint that texture, far
better than the same base prior without the LoRA, from the same start with the same seed and steps.

Production code throughout: engine.render, build-prior-dataset --domain albedo, train-prior
--domain albedo, the pipeline's TextureStage (xatlas unwrap, texture pyramid, render_albedo,
SDS), engine.export.write_result (seams dilated, albedo.png sRGB) and the result read back from
its files. bench/bench_known_answer_albedo.py is the full-size version (docs/known-answer.md).
"""

from __future__ import annotations

import pytest

import known_answer_albedo as kb  # (tests/experiments/conftest.py puts bench/ on the path)


@pytest.fixture(scope="module")
def albedo_result(tmp_path_factory, known_answer_base):
    config = kb.QUICK
    result = kb.run_albedo_experiment(tmp_path_factory.mktemp("known-answer-albedo"), config,
                                      models=known_answer_base(config), log=print)
    print(_figures(result))  # the log and figures show with -rA and on failure
    return result


def _figures(r) -> str:
    p = r.psnr
    return (f"PSNR (dB) start {p['start']:.2f}, trained {p['trained']:.2f}, control {p['control']:.2f}; "
            f"train eval loss {[r.training['eval_loss_start'], r.training['eval_loss_end']]}; unwrap {r.unwrap}")


def test_trained_albedo_prior_paints_the_known_texture(albedo_result):
    r = albedo_result
    p = r.psnr
    figures = _figures(r)
    assert r.training["eval_loss_end"] < kb.QUICK_MAX_EVAL_LOSS_RATIO * r.training["eval_loss_start"], figures
    assert p["trained"] > p["start"] + kb.QUICK_MIN_GAIN_OVER_START_DB, figures
    assert p["trained"] > p["control"] + kb.QUICK_MIN_GAIN_OVER_CONTROL_DB, figures
