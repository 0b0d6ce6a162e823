"""Shared CLI plumbing: config flags generated from dataclasses, one-line errors."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any, Callable, Dict, Iterable, Optional

from ..errors import FDAlignError


def add_config_flags(parser: argparse.ArgumentParser, cls, skip: Iterable[str] = (), group_title: Optional[str] = None) -> None:
    """Add one ``--field-name VALUE`` flag per dataclass field (parsed later, typed)."""
    group = parser.add_argument_group(group_title or f"{cls.__name__} (override the YAML config)")
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        group.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            default=None,
            metavar="X",
            help=f"default: {default}",
        )


def flag_overrides(args: argparse.Namespace, cls) -> Dict[str, Any]:
    """The config fields given on the command line (``None`` = not given)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in vars(args).items() if k in names and v is not None}


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports errors as one line (``prog: error: ...``) and exits 2."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def run_cli(main: Callable[[], int], prog: str) -> int:
    """Run ``main``, turning user errors into one line on stderr and a non-zero exit."""
    try:
        return main() or 0
    except FDAlignError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; finished work is saved, re-run the same command to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1
