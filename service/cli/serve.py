"""Serving commands: ``serve`` (the HTTP API) and ``demo`` (prepare, then serve)."""

from __future__ import annotations

import argparse
from pathlib import Path

from newarrivals.indexer import NewArrivalsError
from newarrivals.service.demo import DemoConfig, run_demo

__all__ = ["add_parsers"]


def _add_serve(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "serve",
        help="HTTP API over an index (FastAPI + uvicorn); every setting can also come from "
        "a NEWARRIVALS_* variable (flags win)",
    )
    p.add_argument(
        "--index", type=Path, default=None, help="index root or version (default demo/index)"
    )
    p.add_argument("--catalog", type=Path, default=None, help="default: the manifest's")
    p.add_argument("--journal", type=Path, default=None, help="default <index>/journal.sqlite")
    p.add_argument("--ranker", type=Path, default=None, help="ranker artifact (for rerank)")
    p.add_argument(
        "--api-key-file", type=Path, default=None, help="file with the write/admin API key"
    )
    p.add_argument(
        "--read-only", action="store_const", const=True, default=None, help="no write routes"
    )
    p.add_argument("--device", default=None, help="encoders' and ranker's device (cpu)")
    p.add_argument("--threads", type=int, default=None, help="encoder and ranker CPU threads")
    p.add_argument(
        "--retrieval",
        choices=["mean", "late-max"],
        default=None,
        help="first stage: mean (user vector, ANN; default) or late-max (per-modality "
        "max-similarity to recent products, exact; README)",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--access-log",
        action="store_true",
        help="log every request (off by default: /metrics counts and times them, and a log "
        "line per request costs the hot path)",
    )
    p.set_defaults(func=_cmd_serve)


def _cmd_serve(args: argparse.Namespace) -> int:
    # Imported here: the web stack is only needed by this command.
    import uvicorn
    from pydantic import ValidationError

    from newarrivals.service.api import ServeSettings, create_app

    flags = {
        "index": args.index,
        "catalog": args.catalog,
        "journal": args.journal,
        "ranker": args.ranker,
        "api_key_file": args.api_key_file,
        "read_only": args.read_only,
        "device": args.device,
        "threads": args.threads,
        "retrieval": args.retrieval,
    }
    try:
        settings = ServeSettings(**{k: v for k, v in flags.items() if v is not None})
    except ValidationError as exc:
        raise NewArrivalsError(f"invalid serve settings: {exc}") from None
    app = create_app(settings)
    # log_config=None: uvicorn's loggers go through the logging set up in main().
    uvicorn.run(app, host=args.host, port=args.port, log_config=None, access_log=args.access_log)
    return 0


def _add_demo(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "demo",
        help="first run: catalogue -> image tower -> index -> ranker -> evaluation -> API + page",
    )
    p.add_argument("--workdir", type=Path, default=DemoConfig.workdir)
    p.add_argument(
        "--data",
        type=Path,
        default=None,
        help="a catalogue (generic schema or H&M layout) instead of the synthetic one",
    )
    p.add_argument("--cutoff", default=None, help="first day of the new arrivals (ISO date)")
    p.add_argument("--products", type=int, default=DemoConfig.products)
    p.add_argument("--users", type=int, default=DemoConfig.users)
    p.add_argument("--seed", type=int, default=DemoConfig.seed)
    p.add_argument("--tower-minutes", type=float, default=DemoConfig.tower_minutes)
    p.add_argument("--ranker-minutes", type=float, default=DemoConfig.ranker_minutes)
    p.add_argument("--user-tower-minutes", type=float, default=DemoConfig.user_tower_minutes)
    p.add_argument("--eval-seeds", type=int, default=DemoConfig.eval_seeds)
    p.add_argument("--no-serve", action="store_true", help="prepare everything, then exit")
    p.add_argument("--host", default=DemoConfig.host)
    p.add_argument("--port", type=int, default=DemoConfig.port)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    run_demo(
        DemoConfig(
            workdir=args.workdir,
            data=args.data,
            cutoff=args.cutoff,
            products=args.products,
            users=args.users,
            seed=args.seed,
            tower_minutes=args.tower_minutes,
            ranker_minutes=args.ranker_minutes,
            user_tower_minutes=args.user_tower_minutes,
            eval_seeds=args.eval_seeds,
            serve=not args.no_serve,
            host=args.host,
            port=args.port,
            device=args.device,
        )
    )
    return 0


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register this group's commands."""
    _add_serve(sub)
    _add_demo(sub)
