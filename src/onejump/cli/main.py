"""The entry point: parse, dispatch, and turn every error into one line and an exit code."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from ..errors import OneJumpError
from ..interrupts import Kept, current
from .experiment import (
    cmd_compare,
    cmd_evaluate,
    cmd_extract,
    cmd_info,
    cmd_prepare,
    cmd_report,
    cmd_run,
    cmd_select,
    cmd_sweep,
    cmd_train,
)
from .frontier import cmd_frontier
from .lenses import cmd_generate, cmd_lens
from .modes import check_invocation
from .parser import _check_argv, _friendly_types, build_parser
from .scaling import cmd_scaling
from .stream import cmd_stream_train

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "prepare": cmd_prepare,
    "extract": cmd_extract,
    "train": cmd_train,
    "select": cmd_select,
    "evaluate": cmd_evaluate,
    "report": cmd_report,
    "run": cmd_run,
    "sweep": cmd_sweep,
    "compare": cmd_compare,
    "generate": cmd_generate,
    "lens": cmd_lens,
    "info": cmd_info,
    "stream-train": cmd_stream_train,
    "frontier": cmd_frontier,
    "scaling": cmd_scaling,
}


def _quiet_libraries(quiet: bool) -> None:
    """Keep library chatter off the terminal: warnings always, progress bars with --quiet."""
    import os

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    if quiet:
        hf_logging.disable_progress_bar()


def _os_error_message(exc: OSError) -> str:
    import errno

    where = f" {exc.filename}" if exc.filename else ""
    if exc.errno == errno.ENOSPC:
        return f"disk full while writing{where}: free space and rerun the same command (finished work is kept)"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"cannot write or read{where}: {exc.strerror}; use a folder you can write to"
    if exc.errno == errno.ENOTDIR:
        return f"a part of{where or ' a path'} is a file, not a folder"
    return f"{exc.strerror or exc}{':' + where if where else ''}"


def _one_line(text: str) -> str:
    return " ".join(line.strip() for line in str(text).splitlines() if line.strip())


def main(argv: list[str] | None = None) -> int:
    import os

    parser = build_parser()
    _friendly_types(parser)
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # usage errors and --help: a return code, also when called in-process
        return exc.code if isinstance(exc.code, int) else 2
    if args.command is None:
        parser.print_help()
        return 2
    import signal

    from ..threads import apply_thread_policy

    interrupted: list[str] = []  # what the interrupt kept, said when the signal arrived
    args.kept = Kept("nothing was kept")  # what this command keeps so far: the command says it as it goes

    def _interrupt(signum: int, _frame: object) -> None:  # `kill` behaves like Ctrl-C: say what was kept
        interrupted.append(current(args.kept.message))  # with what the step running right now keeps
        raise KeyboardInterrupt

    # Libraries (torch, safetensors) can turn a KeyboardInterrupt raised inside them into an error of
    # their own; remembering the signal lets an error that follows Ctrl-C be reported as the interrupt.
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, getattr(signal, "SIGTERM", None))
                if sig is not None}
    import warnings

    def _warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
        if not args.quiet:  # one line of ours, never a raw UserWarning with its file and source line
            print(f"onejump {args.command}: warning: {_one_line(message)}", file=sys.stderr)

    shown = warnings.showwarning
    warnings.showwarning = _warning
    try:
        _check_argv(argv)
        check_invocation(build_parser, parser, args, argv)
        _quiet_libraries(args.quiet)
        apply_thread_policy(args.threads)
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        return _interrupted(args.command, interrupted[0] if interrupted else args.kept.message)
    except OneJumpError as exc:
        if interrupted:
            return _interrupted(args.command, interrupted[0] if interrupted else args.kept.message)
        print(f"onejump {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - the last line of defence: one line, never a traceback
        from ..io import os_error_of

        if interrupted:
            return _interrupted(args.command, interrupted[0] if interrupted else args.kept.message)
        err = os_error_of(exc)
        if err is not None:
            print(f"onejump {args.command}: error: {_one_line(_os_error_message(err))}", file=sys.stderr)
            return 2
        if os.environ.get("ONEJUMP_DEBUG"):
            raise
        print(f"onejump {args.command}: internal error: {type(exc).__name__}: {_one_line(exc)} (a bug: please "
              "report it; ONEJUMP_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 1
    finally:
        warnings.showwarning = shown
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _interrupted(command: str, kept: str) -> int:
    print(f"\nonejump {command}: interrupted: {kept}", file=sys.stderr)
    return 130
