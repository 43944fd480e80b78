"""Command line entry: ``python -m gateway.simulator --profile llama-2-7b --port 8001``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from gateway.simulator.answers import load_answer_rules
from gateway.simulator.faults import FAULT_MODES
from gateway.simulator.profiles import PROFILES
from gateway.simulator.server import serve


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the simulator command."""
    parser = argparse.ArgumentParser(
        prog="python -m gateway.simulator",
        description="Backend simulator (TEST/DEMO ONLY): a vLLM-like OpenAI-compatible server "
        "with a timing model and fault injection. It does not run a real model.",
    )
    parser.add_argument("--profile", default="llama-2-7b", choices=sorted(PROFILES), help="timing profile")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--time-scale", type=float, default=1.0, help="multiply every delay (0.01 = 100x faster)")
    parser.add_argument("--max-concurrency", type=int, default=None, help="override max running requests")
    parser.add_argument("--model-name", default=None, help="override the served model name")
    parser.add_argument("--seed", type=int, default=0, help="default generation seed")
    parser.add_argument("--fault", choices=FAULT_MODES, default=None, help="start with this fault active")
    parser.add_argument("--answer-rules", default=None, help="JSON file of per-prompt answer rules")
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the simulator until interrupted."""
    args = build_parser().parse_args(argv)
    if args.max_concurrency is not None and args.max_concurrency < 1:
        print("--max-concurrency must be >= 1", file=sys.stderr)
        return 2
    try:
        rules = load_answer_rules(Path(args.answer_rules)) if args.answer_rules else None
    except (OSError, ValueError) as exc:
        print(f"--answer-rules: {exc}", file=sys.stderr)
        return 2
    serve(
        args.profile,
        args.host,
        args.port,
        time_scale=args.time_scale,
        max_concurrency=args.max_concurrency,
        model_name=args.model_name,
        seed=args.seed,
        faults=args.fault,
        answer_rules=rules,
        log_level=args.log_level,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
