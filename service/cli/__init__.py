"""The ``newarrivals`` command line: parse arguments into configs, call one library function.

Logging and environment defaults are set here and only here.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from newarrivals.indexer import NewArrivalsError
from newarrivals.service.cli import evaluate, index, ranker, serve, towers

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="newarrivals",
        description="Content-based recommendations for brand-new products.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in (index, serve, towers, evaluate, ranker):
        group.add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # The default models ship inside packages; never let a library reach for a hub.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        return int(args.func(args))
    except NewArrivalsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
