"""``python -m pointsparse.bench <suite>``: benchmarks that print a table and write JSON."""

import argparse
import sys

from . import conv, grouping, host, implicit, kmap, minkunet, sparse24


SUITES = {"conv": conv, "grouping": grouping, "host": host, "implicit": implicit, "kmap": kmap, "minkunet": minkunet,
          "sparse24": sparse24}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pointsparse.bench")
    sub = parser.add_subparsers(dest="suite", required=True)
    for name, module in SUITES.items():
        module.add_arguments(sub.add_parser(name, help=module.__doc__.splitlines()[0]))
    args = parser.parse_args(argv)
    return SUITES[args.suite].run(args)


if __name__ == "__main__":
    sys.exit(main())
