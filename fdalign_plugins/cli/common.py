"""Shared CLI plumbing: config flags generated from dataclasses, one-line errors."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any, Callable, Dict, Iterable, Optional, Tuple

from ..config import rename_deprecated
from ..errors import FDAlignError


def add_config_flags(parser: argparse.ArgumentParser, cls, skip: Iterable[str] = (), group_title: Optional[str] = None,
                     helps: Optional[Dict[str, Tuple[str, str]]] = None) -> None:
    """Add one ``--field-name VALUE`` flag per dataclass field (parsed later, typed).

    Args:
        helps: ``{field: (metavar, explanation)}``; the default is appended to each.
    """
    group = parser.add_argument_group(group_title or f"{cls.__name__} (override the YAML config)")
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        if isinstance(default, (tuple, list)):
            default = ",".join(map(str, default))
        metavar, text = (helps or {}).get(f.name, ("X", ""))
        group.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            default=None,
            metavar=metavar,
            help=f"{text} (default: {default})" if text else f"default: {default}",
        )
    for old, (new, _why) in getattr(cls, "RENAMED", {}).items():
        if new not in skip:
            group.add_argument(flag_name(old), dest=old, default=None, metavar=(helps or {}).get(new, ("X", ""))[0],
                               help=f"deprecated name of {flag_name(new)}")


def flag_name(key: str) -> str:
    """The flag of a config key: ``spurious_weight`` -> ``--spurious-weight``."""
    return "--" + key.replace("_", "-")


def flag_overrides(args: argparse.Namespace, cls) -> Dict[str, Any]:
    """The config fields given on the command line (``None`` = not given)."""
    names = {f.name for f in dataclasses.fields(cls)} | set(getattr(cls, "RENAMED", {}))
    given = {k: v for k, v in vars(args).items() if k in names and v is not None}
    return rename_deprecated(cls, given, spell=flag_name) or {}


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports errors as one line (``prog: error: ...``) and exits 2."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's time limit, ``kill``): handled like Ctrl-C."""


def _raise_terminated(signum, frame):  # noqa: ARG001 - signal handler signature
    raise Terminated("SIGTERM")


#: Exit statuses of the command-line tools (docs/bench.md lists them).
EXIT_OK, EXIT_FAILED_RECORDS, EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 1, 2, 130, 143


def run_cli(main: Callable[[], int], prog: str, resume_hint: str = "re-run the same command to resume") -> int:
    """Run ``main``, turning user errors into one line on stderr and a non-zero exit.

    Exit statuses: 0 done; 1 done, but some records failed (``fdalign-bench``); 2 bad
    input (one line naming the problem and the fix); 130 interrupted (Ctrl-C); 143
    terminated (SIGTERM). SIGTERM is handled like Ctrl-C: the finished work is saved and
    ``resume_hint`` says how to go on.
    """
    import signal
    import threading

    from ..preflight import forget_created_folders, remove_created_folders

    forget_created_folders()  # only what this command creates is removed when it fails
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        rc = main() or 0
        forget_created_folders()
        return rc
    except FDAlignError as exc:
        remove_created_folders()  # a rejected command leaves no empty run folder behind
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt as exc:
        forget_created_folders()
        what = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"
        print(f"{prog}: {what}; finished work is saved, {resume_hint}", file=sys.stderr)
        return EXIT_TERMINATED if isinstance(exc, Terminated) else EXIT_INTERRUPTED
    except BrokenPipeError:
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
