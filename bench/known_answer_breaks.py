"""Break one production piece on purpose, then run the known-answer test: it must fail.

    BREAK=sds|renderer|trainer|views PYTHONPATH=bench .venv/bin/python -m pytest -p known_answer_breaks \
        tests/experiments/test_known_answer.py

A pytest plugin: each break is a monkeypatch applied before the test imports anything. Figures
measured with it are in docs/known-answer.md ("Broken on purpose").
"""

from __future__ import annotations

import os

BREAKS = ("sds", "renderer", "trainer", "views")


def pytest_configure(config):
    what = os.environ.get("BREAK", "")
    if not what:
        return
    if what not in BREAKS:
        raise ValueError(f"BREAK={what!r}: use one of {', '.join(BREAKS)}")
    import torch

    if what == "sds":  # w(t) = 0: SDS puts no gradient on the renders
        import engine.prior.sds as sds

        sds.sds_weight = lambda alphas_cumprod, t, weighting: torch.zeros_like(alphas_cumprod[t])
    elif what == "renderer":  # the geometry stage's renders carry no gradient back to the geometry
        import engine.pipeline.geometry_stage as stage

        render = stage.render
        stage.render = lambda verts, faces, cameras, **kw: render(verts.detach(), faces, cameras, **kw)
    elif what == "trainer":  # train-prior's optimiser never steps: the LoRA stays at its zero start
        import engine.prior.train as train

        init = train.PriorTrainer.__init__

        def frozen(self, *args, **kwargs):
            init(self, *args, **kwargs)
            self.optimizer.step = lambda *a, **k: None

        train.PriorTrainer.__init__ = frozen
    elif what == "views":  # no view text anywhere: base, dataset training and SDS
        import engine.prior.model as model

        model.view_label_weights = lambda view: {}
