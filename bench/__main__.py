"""``python -m bench [NAME] [options]`` (what ``python3 dev.py bench`` runs): one benchmark by name.

NAME is a module of this package with a ``main()``: ``ingest`` (the default, when the first
argument is an option or absent: the receiver beside a plain Starlette handler and a naive
INSERT-per-request one, over HTTP), ``stages`` (the CPU of each step of the acknowledgement and
of the writer, in-process) or ``query``, for example. ``python -m bench.NAME --help`` describes
each one's options.
"""

from __future__ import annotations

import importlib
import sys

DEFAULT = "ingest"


def main() -> None:
    argv = sys.argv[1:]
    name = DEFAULT
    if argv and not argv[0].startswith("-"):
        name, argv = argv[0], argv[1:]
    if name in {"__main__", "support", "baselines"}:
        sys.exit(f"bench: {name} is not a benchmark")
    try:
        module = importlib.import_module(f"bench.{name}")
    except ModuleNotFoundError as error:
        if error.name != f"bench.{name}":
            raise
        sys.exit(f"bench: no benchmark named {name!r} (try: python -m bench ingest --help)")
    sys.argv = [f"python -m bench.{name}", *argv]
    module.main()


if __name__ == "__main__":
    main()
