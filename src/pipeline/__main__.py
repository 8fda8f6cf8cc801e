"""`python -m pipeline <command> [args]`: the installed commands under one name.

python -m pipeline train optimizer=adam         # = pipeline-train = python train.py
python -m pipeline compare --sweep <run id>     # = pipeline-compare
python -m pipeline --help                       # the commands
"""

from __future__ import annotations

import importlib
import sys

# command -> (module:function, what it does); pyproject.toml's [project.scripts] names the same
# functions `pipeline-<command>`. Each module is imported only when its command runs.
COMMANDS = {
    "train": ("pipeline.cli.train:app", "train one run, or a sweep with -m (Hydra overrides)"),
    "compare": ("pipeline.cli.compare:main", "a sweep's comparison report, read from MLflow"),
    "landscape": ("pipeline.cli.landscape:app", "optimizer paths on 2-D test functions"),
    "runs": ("pipeline.cli.runs:main", "store housekeeping: clean-stale, sync"),
    "server": ("pipeline.cli.server:main", "a shared MLflow tracking server (PostgreSQL)"),
}


def usage() -> str:
    lines = ["usage: python -m pipeline <command> [args]   (<command> --help for its own)", ""]
    lines += [f"  {name:<10} {about}" for name, (_, about) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    if argv[0] not in COMMANDS:
        print(f"error: no command {argv[0]!r}\n{usage()}", file=sys.stderr)
        return 2
    module, _, function = COMMANDS[argv[0]][0].partition(":")
    # The command reads sys.argv as if it had been started by its own name (Hydra does).
    sys.argv = [f"pipeline-{argv[0]}", *argv[1:]]
    status = getattr(importlib.import_module(module), function)()
    return int(status or 0)


if __name__ == "__main__":
    sys.exit(main())
