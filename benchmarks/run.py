"""`make bench`: every benchmark, each printing ratios measured side by side in one run."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import bench_stego  # noqa: E402  (after the path set-up)


def main():
    bench_stego.run()


if __name__ == "__main__":
    main()
