"""Thin entry point: build the UI, start the local worker, launch. Same as `studio serve`.

Importing this module loads gradio and the studio's light modules only, never the training stack.
"""
from __future__ import annotations

import sys

from studio.ui import build_ui  # noqa: F401  (importable for tests and tooling)


def main() -> int:
    from workers.cli import main as cli_main  # the whole command line; its commands import the workers on use

    return cli_main(["serve", *sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(main())
