"""Break one production piece on purpose, then run a known-answer test: it must fail.

    BREAK=sds|renderer|trainer|views PYTHONPATH=bench .venv/bin/python -m pytest -p known_answer_breaks \
        tests/experiments/test_known_answer.py
    BREAK=expression_text|expression_branch ... tests/experiments/test_known_answer_expression.py
    BREAK=albedo_lora ... tests/experiments/test_known_answer_albedo.py

A pytest plugin: each break is a monkeypatch applied before the test imports anything. Figures
measured with it are in docs/known-answer.md ("Broken on purpose").
"""

from __future__ import annotations

import os

BREAKS = ("sds", "renderer", "trainer", "views", "expression_text", "expression_branch", "albedo_lora")


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
    elif what == "expression_text":  # every prompt says "neutral" (training and SDS): the expression text dropped
        import engine.prior.model as model

        phrase = model.expression_phrase
        model.expression_phrase = lambda expression, view_label: phrase("neutral", view_label)
    elif what == "expression_branch":  # train-prior leaves the expression branch's LoRA as it starts (no effect)
        import engine.prior.train as train

        init = train.PriorTrainer.__init__

        def frozen_branch(self, *args, **kwargs):
            init(self, *args, **kwargs)
            branch = {id(p) for n, p in self.prior.unet.named_parameters() if "_exp." in n}
            for group in self.optimizer.param_groups:
                group["params"] = [p for p in group["params"] if id(p) not in branch]
            for p in self.params:
                if id(p) in branch:
                    p.requires_grad_(False)

        train.PriorTrainer.__init__ = frozen_branch
    elif what == "albedo_lora":  # the texture stage runs on the base prior, as if no albedo LoRA were loaded
        import engine.pipeline.texture_stage as stage

        init = stage.TextureStage.__init__

        def without_lora(self, settings, prior, *args, **kwargs):
            prior.set_task(None)
            init(self, settings, prior, *args, **kwargs)

        stage.TextureStage.__init__ = without_lora
