"""`python -m bench SCENARIO ...`: the load-test harness and the engine micro-benchmark."""

from __future__ import annotations

import argparse
import sys

from . import (
    chat,
    compare,
    constrained,
    engine,
    faults,
    fuzz,
    moderation_quality,
    npc,
    screenshots,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    scenarios = parser.add_subparsers(dest="scenario", required=True)
    for module in (
        engine,
        constrained,
        npc,
        chat,
        compare,
        fuzz,
        moderation_quality,
        faults,
        screenshots,
    ):
        module.add_arguments(scenarios)
    args = parser.parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
