"""The generation job: job.json in, result folder out (geometry + expressions, texture, export).

Standard library only at import time (the add-on imports :mod:`engine.pipeline.job`); torch and
the stage rooms are imported by :func:`run_job` when a job actually runs.

    job.py        the job spec (job.json), validated field by field; expression-name checks
    presets.py    the preset table every stage reads
    run.py        run_job(): stages, checkpoints, cancellation, errors -> protocol messages
    job_folder.py the job folder as the engine's: claim, lock, placing a job (same / another / --new)
    worker.py     `python -m engine run JOB_DIR`: the protocol on stdout around run_job
    generate.py   `python -m engine generate`: the job for shells and schedulers (--resume, --new)
    batch.py      `python -m engine batch`: a manifest of identities (batch_job.py: one job's
                  worker process and retries; batch_ray.py: the Ray runner)
"""

from __future__ import annotations


def run_job(job_dir, *, resume: bool = False, emit=None, should_stop=None):
    """Run the job in ``job_dir`` in this process; see :func:`engine.pipeline.run.run_job`."""
    from .run import run_job as _run_job

    return _run_job(job_dir, resume=resume, emit=emit, should_stop=should_stop)
