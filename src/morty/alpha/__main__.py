"""alpha's entry point. It works in each of these layouts:

- ``python3 -m morty.alpha``: installed with the morty package;
- ``python3 -m alpha``: /opt/morty on sys.path (cwd or PYTHONPATH);
- ``python3 /opt/morty/alpha/__main__.py``: the image entrypoint, no package context at all.
"""

import time

STARTED = time.monotonic()  # first thing: MORTY-READY counts from here

import importlib  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from typing import cast  # noqa: E402


def _package() -> str:
    if __package__:
        return __package__
    # Run as a file: import this directory as a package, from its parent (replacing the script's own directory on
    # sys.path, so alpha's private modules are not importable as top-level names).
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[0] = os.path.dirname(here)
    return os.path.basename(here)


def _main() -> int:
    package = _package()
    # Spawn the runtime before importing the agent (and asyncio, ~100 ms): the two start-ups overlap.
    early = importlib.import_module(package + "._process").EarlyStart.begin()
    agent = importlib.import_module(package + "._agent")
    return cast(int, agent.main(STARTED, early))


if __name__ == "__main__":
    sys.exit(_main())
