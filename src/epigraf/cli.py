"""The ``epigraf`` command line: one sub-command per module in ``epigraf.commands``.

Each command module exposes ``register(subparsers)``, which adds its parser and sets ``func`` to a
callable taking the parsed arguments and returning an exit code.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import sys
import warnings
from collections.abc import Iterator

from tqdm.contrib.logging import logging_redirect_tqdm

from epigraf.process_settings import flush_denormals, tune_cpu_allocator

# command name → module in epigraf.commands
COMMANDS = {
    "train": "train",
    "generate": "generate",
    "video": "video",
    "mesh": "mesh",
    "metrics": "metrics",
    "import": "import_original",
    "dataset": "dataset",
    "view": "view",
    "invert": "invert",
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The full parser, or with ``only`` just that command's (importing one command module keeps start-up fast)."""
    parser = argparse.ArgumentParser(prog="epigraf", description="EpiGRAF 3D-aware GANs in pure PyTorch.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in COMMANDS.items():
        if only is None or name == only:
            importlib.import_module(f"epigraf.commands.{module}").register(sub)
    return parser


@contextlib.contextmanager
def warnings_as_log_lines() -> Iterator[None]:
    """epigraf's own warnings (DatasetWarning, CameraPoseWarning, …) become log lines in the CLI's voice
    ("WARNING: <message>") instead of Python's "file.py:91: DatasetWarning: …" and the source line under it.
    Other libraries' warnings keep Python's form; the filters (which and how often) are untouched."""
    python_form = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if category.__module__.split(".")[0] == "epigraf":
            logging.getLogger(category.__module__).warning("%s", message)
        else:
            python_form(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = python_form


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # Before any torch operation starts its worker threads: they inherit the flag (process_settings.flush_denormals).
    flush_denormals()
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command if command in COMMANDS else None).parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s: %(message)s")
    tune_cpu_allocator()
    try:
        # Log lines print above any progress bar instead of being glued onto its line.
        with logging_redirect_tqdm(), warnings_as_log_lines():
            return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, NotADirectoryError, ImportError) as err:
        # User errors (bad dataset, checkpoint, flag value, a missing optional extra) get one clear line.
        print(f"epigraf {args.command}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        # The machine's refusal rather than the user's input: a full disk, an unwritable folder.
        print(f"epigraf {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
