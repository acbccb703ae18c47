"""``make bench``: every benchmark, one figure a line, each beside its reference.

Figures are per core: each benchmark runs in this one process, single-threaded,
except the relay benchmark, which runs each relay as a process pinned to one
core and its load from this process pinned to another.
"""

import platform
import sys

from bench import login, noise, overlay, relay, session, stun, wire


def main() -> int:
    print(f"edge benchmarks on {platform.machine()}, Python {platform.python_version()}")
    print("(one core; each rate is followed by its reference measured in the same run)")
    for module in (noise, session, wire, stun, login, overlay, relay):
        print(f"\n== {module.__name__}")
        for figure in module.run():
            print(figure.line(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
