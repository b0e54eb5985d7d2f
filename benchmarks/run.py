"""`make bench`: every benchmark, each printing ratios measured side by side in one run."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import bench_stego  # noqa: E402  (after the path set-up)


def main():
    bench_stego.run()
    print()
    from benchmarks import bench_verify  # pylint: disable=import-outside-toplevel  (imports TensorFlow)

    bench_verify.run()
    print()
    from benchmarks import bench_export  # pylint: disable=import-outside-toplevel

    bench_export.run()
    print()
    from benchmarks import bench_prune  # pylint: disable=import-outside-toplevel

    bench_prune.run()
    print()
    from benchmarks import bench_onednn  # pylint: disable=import-outside-toplevel

    bench_onednn.run()
    print()
    from benchmarks import bench_fit_end  # pylint: disable=import-outside-toplevel

    bench_fit_end.run()
    print()
    from benchmarks import bench_first_fit  # pylint: disable=import-outside-toplevel

    bench_first_fit.run()
    print()
    from benchmarks import bench_serve  # pylint: disable=import-outside-toplevel

    bench_serve.run()
    print()
    if data_dir_has("mnist"):
        from benchmarks import bench_keypool  # pylint: disable=import-outside-toplevel

        bench_keypool.run()
    else:
        print("key-pool benchmark skipped: set TFDS_DATA_DIR to a directory holding mnist prepared by tfds")
    print()
    if data_dir_has("fashion_mnist"):
        from benchmarks import bench_embed  # pylint: disable=import-outside-toplevel

        bench_embed.run()
    else:
        print("embedding benchmark skipped: set TFDS_DATA_DIR to a directory holding fashion_mnist prepared by tfds")
    print()
    if data_dir_has("cifar10") and data_dir_has("cifar100"):
        from benchmarks import bench_folder  # pylint: disable=import-outside-toplevel

        bench_folder.run()
    else:
        print("image-folder benchmark skipped: set TFDS_DATA_DIR to a directory holding cifar10 and cifar100")


def data_dir_has(dataset):
    directory = os.environ.get("TFDS_DATA_DIR")
    return bool(directory) and os.path.isdir(os.path.join(directory, dataset))


if __name__ == "__main__":
    main()
