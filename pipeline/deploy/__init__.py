"""The server side: ONNX export, TensorRT engine, DALI preprocessing, the model repository, `ssn deploy`/`ssn serve`
and the serving adapters that the `model_repository/` python models call."""
