"""The `ipguard` command-line interface (a thin click layer over keras_ipguard)."""
