"""Datasets (spec §2.4): one module per published layout, a folder layout for users, the synthetic default.

Entry point: `training.data.base.build_dataset(name, root, split, config, category=None, **options)`.
Supervised epochs: `training.data.sampler.balanced_parts`. JIMS label processing: `training.data.labels`.
Nothing is imported here, so `ssn synth` loads numpy/scipy/PIL only.
"""
