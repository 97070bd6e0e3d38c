"""Model repository files: `config.pbtxt` read/written as tritonclient's protobuf `ModelConfig`, and the checks run
before a repository is deployed or served (ensemble wiring; engines vs this host; backends the server has).
No torch here.
"""

from __future__ import annotations

from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc


def find_templates() -> Path:
    """The model-repository templates: inside the installed package (a wheel; setup.py copies them there), else
    the repository's top-level `model_repository/` (a checkout or an editable install)."""
    here = Path(__file__).resolve().parent
    candidates = (here / "model_repository", here.parents[1] / "model_repository")
    for folder in candidates:
        if (folder / "supersimplenet_py" / "config.pbtxt").is_file():
            return folder
    return candidates[0]  # a broken install: deploy names this folder when it reads it


TEMPLATES = find_templates()


class RepositoryError(ValueError):
    pass


def load_config(path: str | Path) -> mc.ModelConfig:
    path = Path(path)
    try:
        return text_format.Parse(path.read_text(), mc.ModelConfig())
    except text_format.ParseError as err:
        raise RepositoryError(f"{path}: not a valid Triton model configuration: {err}") from err


def save_config(config: mc.ModelConfig, path: str | Path) -> Path:
    path = Path(path)
    header = f"# written by `ssn deploy`; model_repository/{config.name}/config.pbtxt explains each field\n"
    path.write_text(header + text_format.MessageToString(config))
    return path


def model_configs(repository: str | Path) -> dict[str, mc.ModelConfig]:
    """name -> config of every model folder (one holding a config.pbtxt)."""
    repository = Path(repository)
    if not repository.is_dir():
        raise FileNotFoundError(f"model repository {str(repository)!r} is not a folder")
    configs = {}
    for path in sorted(repository.glob("*/config.pbtxt")):
        config = load_config(path)
        if config.name and config.name != path.parent.name:
            raise RepositoryError(f"{path}: name {config.name!r} differs from its folder {path.parent.name!r}")
        configs[path.parent.name] = config
    return configs


def set_parameter(config: mc.ModelConfig, key: str, value: object) -> None:
    config.parameters[key].string_value = "" if value is None else str(value)


def parameters(config: mc.ModelConfig) -> dict[str, str]:
    return {key: value.string_value for key, value in config.parameters.items()}


def tensor(config: mc.ModelConfig, name: str, kind: str):
    """The input or output (`kind`) called `name`; RepositoryError naming the model otherwise."""
    for t in getattr(config, kind):
        if t.name == name:
            return t
    names = [t.name for t in getattr(config, kind)]
    raise RepositoryError(f"model {config.name!r} has no {kind} {name!r} (it has {names})")


def _signature(t) -> tuple[int, tuple[int, ...]]:
    return t.data_type, tuple(t.reshape.shape if t.HasField("reshape") else t.dims)


def ensemble_problems(configs: dict[str, mc.ModelConfig]) -> list[str]:
    """Every mismatch of names, data types, dims or batch sizes along each ensemble's steps."""
    problems = []
    for ens in (c for c in configs.values() if c.platform == "ensemble"):
        produced = {t.name: (_signature(t), f"ensemble input {t.name}") for t in ens.input}
        for step in ens.ensemble_scheduling.step:
            model = configs.get(step.model_name)
            if model is None:
                problems.append(f"{ens.name}: step model {step.model_name!r} is not in the repository")
                continue
            if model.max_batch_size < ens.max_batch_size:
                problems.append(
                    f"{ens.name}: {model.name} max_batch_size {model.max_batch_size} < ensemble's {ens.max_batch_size}"
                )
            for key, value in step.input_map.items():
                try:
                    want = _signature(tensor(model, key, "input"))
                except RepositoryError as err:
                    problems.append(f"{ens.name}: {err}")
                    continue
                if value not in produced:
                    problems.append(f"{ens.name}: {model.name} input {key!r} reads {value!r}, which no step produces")
                elif produced[value][0] != want:
                    problems.append(
                        f"{ens.name}: {model.name} input {key!r} wants {want}, {produced[value][1]} gives "
                        f"{produced[value][0]} (type, dims)"
                    )
            for key, value in step.output_map.items():
                try:
                    produced[value] = (_signature(tensor(model, key, "output")), f"{model.name} output {key}")
                except RepositoryError as err:
                    problems.append(f"{ens.name}: {err}")
        for out in ens.output:
            if out.name not in produced:
                problems.append(f"{ens.name}: output {out.name!r} is produced by no step")
            elif produced[out.name][0] != _signature(out):
                problems.append(
                    f"{ens.name}: output {out.name!r} is {_signature(out)}, {produced[out.name][1]} "
                    f"gives {produced[out.name][0]}"
                )
    return problems


def engine_plans(repository: Path, configs: dict[str, mc.ModelConfig]) -> list[Path]:
    plans = []
    for name, config in configs.items():
        if config.platform == "tensorrt_plan" or config.backend == "tensorrt":
            plans += sorted((repository / name).glob(f"*/{config.default_model_filename or 'model.plan'}"))
    return plans


def serving_problems(repository: str | Path, bundled_server: bool, host: dict | None = None) -> tuple[list, list]:
    """(reasons not to start a server on `repository`, warnings): ensemble wiring, engines whose metadata does
    not match `host` (default: this host), backends the bundled server lacks."""
    from pipeline.deploy import trt_engine

    repository = Path(repository)
    configs = model_configs(repository)
    if not configs:
        return [f"model repository {str(repository)!r} holds no model (no */config.pbtxt)"], []
    problems, warnings = ensemble_problems(configs), []
    if bundled_server:
        for name, config in configs.items():
            backend = config.backend or config.platform
            if backend not in ("python", "ensemble"):
                problems.append(
                    f"model {name!r} needs the {backend!r} backend; the tritonserver bundled in nvidia-pytriton has "
                    "only the python backend: deploy with --target py, or serve in the NGC tritonserver container"
                )
    plans = engine_plans(repository, configs)
    if plans:
        host = host or trt_engine.host_description()
        for plan in plans:
            try:
                refuse, warn = trt_engine.engine_problems(trt_engine.read_metadata(plan), host)
            except trt_engine.EngineError as err:
                refuse, warn = [str(err)], []
            problems += [f"{plan.relative_to(repository)}: {r}; rebuild it on this host" for r in refuse]
            warnings += [f"{plan.relative_to(repository)}: {w}" for w in warn]
    return problems, warnings
