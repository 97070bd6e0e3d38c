"""`ssn` command line: a thin, lazy dispatcher.

Each subcommand lives with its capability, in a module that defines `configure_<name>(parser)` (adds the flags)
and `run_<name>(args) -> int`. Only the module of the subcommand being run is imported, so `ssn stream` (camera
side) never loads torch, and `ssn --help` imports nothing heavy.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import NamedTuple


class Command(NamedTuple):
    module: str
    help: str


COMMANDS: dict[str, Command] = {
    "info": Command("pipeline.stats", "config, parameter counts and GFLOPs per module"),
    "infer": Command("pipeline.infer", "defect score per image; heat-map PNGs with --out"),
    "export": Command("pipeline.deploy.export", "ONNX of the inference graph (fp32/fp16), checked with onnxruntime"),
    "deploy": Command("pipeline.deploy.deploy", "fill a Triton model repository from a checkpoint (py or trt target)"),
    "serve": Command("pipeline.deploy.triton_server", "run a local Triton Inference Server on a model repository"),
    "stream": Command("pipeline.stream.cli", "stream cameras to tritonserver over gRPC: results, overlays, live table"),
    "synth": Command("training.data.synthetic", "write the synthetic defect dataset (MVTec layout, PNG)"),
    "train": Command("training.cli", "train a preset in a supervision regime; evaluate; store alarm thresholds"),
    "eval": Command("training.eval_cli", "paper metrics, report and (optionally) thresholds for a checkpoint"),
    "demo": Command("pipeline.line_demo", "the whole line on the embedded default: train, deploy, serve, stream"),
}


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    """The parser; only `selected` gets its real flags (its module is imported), the others list their help."""
    parser = argparse.ArgumentParser(prog="ssn", description="SuperSimpleNet surface-defect detection")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in COMMANDS.items():
        p = sub.add_parser(name, help=command.help, description=command.help)
        if name == selected:
            module = importlib.import_module(command.module)
            getattr(module, f"configure_{name}")(p)
            p.set_defaults(func=getattr(module, f"run_{name}"))
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    selected = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(selected if selected in COMMANDS else None).parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"ssn {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
