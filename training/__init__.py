"""Training and evaluation: datasets, synthetic anomalies, losses, trainer, metrics and reports.

    data/            one module per layout (MVTec AD, VisA, KSDD2, SensumSODF, folder, synthetic) -> samples
    perlin.py, generator.py   feature-level anomalies (spec §2.1)
    losses.py        focal + truncated L1, JIMS masking (spec §2.2)
    optim.py, regimes.py      AdamW groups, MultiStepLR, the authors' settings per supervision regime (spec §2.3-2.5)
    step.py, trainer.py, feature_cache.py, distributed.py, state.py   training loop, cache, DDP, exact resume
    metrics.py, aupro.py, evaluate.py, report.py, overlays.py, paper.py   paper metrics, thresholds, reports
    model_init.py    seeded model, backbone weights, BN calibration of a random backbone
    feature_diagnostics.py    is the synthetic noise visible in these features? (Mahalanobis baseline)
    cli.py, eval_cli.py       `ssn train`, `ssn eval`

Uses `pipeline/` (the pure `SuperSimpleNet` module, configs, checkpoints); nothing in `pipeline/` imports from here.
"""
