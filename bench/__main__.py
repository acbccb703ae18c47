"""``make bench``: every benchmark, one figure a line, each beside its reference.

Figures are per core: each benchmark runs in this one process, single-threaded,
except the relay benchmark, which runs each relay as a process pinned to one
core and its load from this process pinned to another, and the NAT lab
benchmark, which runs a whole network of real processes and prints each figure
beside its target.

``python -m bench NAME...`` runs only the benchmarks named (``noise``, ``lab``, ...).
"""

import platform
import sys

from bench import device, echo, lab, login, noise, overlay, relay, session, stun, voice, wire

BENCHMARKS = {
    module.__name__.removeprefix("bench."): module
    for module in (noise, session, wire, stun, login, overlay, relay, lab, voice, echo, device)
}


def main(argv: list[str]) -> int:
    chosen = argv or list(BENCHMARKS)
    unknown = [name for name in chosen if name not in BENCHMARKS]
    if unknown:
        print(f"no benchmark {', '.join(unknown)}; there are {', '.join(BENCHMARKS)}")
        return 2
    print(f"edge benchmarks on {platform.machine()}, Python {platform.python_version()}")
    print("(one core; each rate is followed by its reference measured in the same run)")
    for name in chosen:
        module = BENCHMARKS[name]
        print(f"\n== {module.__name__}")
        for figure in module.run():
            print(figure.line(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
