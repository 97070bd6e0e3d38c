"""The SuperSimpleNet model (pure nn.Module), configs, checkpoints, image I/O and the `ssn` CLI."""
