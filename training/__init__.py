"""Training and evaluation glue (anomaly generator, losses, datasets, metrics).

Not implemented yet: the training issue adds it. It will use `pipeline.model.SuperSimpleNet.features()` and
`.heads()` and the `TrainConfig` of each preset; nothing in pipeline/ imports from here.
"""
