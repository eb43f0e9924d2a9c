"""argv -> Config, derived from the Config fields; then run. The only module that exits."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from threshold import __version__
from threshold.config import Config, ConfigError, options, parse_text
from threshold.loader import LoadError

EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="threshold",
        description="Serve an ASGI or WSGI application over HTTP/1.1.",
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument("--version", action="version", version=f"threshold {__version__}")
    parser.add_argument(
        "--config", metavar="FILE.toml", help="Read options from a TOML file (CLI and env win)."
    )
    for name, type_str, spec, default in options():
        if not spec.cli:
            continue
        flag = "--" + name.replace("_", "-")
        help_text = spec.help
        if not spec.positional and type_str != "bool":
            help_text += f" [default: {','.join(default) if spec.multiple else default}]"
        if spec.positional:
            parser.add_argument(name, nargs="?", metavar=spec.metavar, help=help_text)
        elif type_str == "bool":
            parser.add_argument(
                flag, dest=name, action=argparse.BooleanOptionalAction, help=help_text
            )
        elif spec.multiple:
            parser.add_argument(
                *spec.flags, flag, dest=name, action="append", metavar=spec.metavar, help=help_text
            )
        else:
            parser.add_argument(
                *spec.flags,
                flag,
                dest=name,
                choices=spec.choices,
                metavar=spec.metavar,
                help=help_text,
            )
    return parser


def parse_args(argv: Sequence[str] | None = None) -> Config:
    """Parse argv into a Config (file < environment < command line)."""
    args = vars(build_parser().parse_args(argv))
    config_file = args.pop("config", None)
    values: dict[str, Any] = {}
    for name, value in args.items():
        if isinstance(value, str) and name != "app":
            value = parse_text(name, value)
        values[name] = value
    config = Config.load(values, config_file=config_file)
    if config.app is None:
        raise ConfigError("app: no application given (threshold MODULE:ATTR)")
    return config


def main(argv: Sequence[str] | None = None) -> None:
    try:
        config = parse_args(argv)
    except ConfigError as exc:
        print(f"threshold: error: {exc}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    from threshold.supervisor import run_config  # the server, imported once args are good

    try:
        args = sys.argv[1:] if argv is None else list(argv)
        code = run_config(config, args, lambda: parse_args(args))
    except LoadError as exc:
        print(f"threshold: error: {exc}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    sys.exit(code)
