import os
import subprocess
import sys
import textwrap


def _python(code):
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env)


def test_importing_the_package_routes_tf_keras_to_keras_2():
    result = _python(
        """
        import keras_ipguard
        import tensorflow as tf
        import tf_keras
        assert tf.keras.Model is tf_keras.Model, tf.keras
        print(tf_keras.__version__)
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("2.")


def test_tensorflow_already_on_keras_3_gives_an_error_saying_what_to_do():
    result = _python(
        """
        import tensorflow as tf
        tf.keras.layers.Dense  # resolves tf.keras to Keras 3
        import keras_ipguard
        """
    )
    assert result.returncode != 0
    assert "ImportError: keras_ipguard needs tf_keras (Keras 2)" in result.stderr
    assert "TF_USE_LEGACY_KERAS=1" in result.stderr


def test_the_identity_commands_do_not_import_tensorflow():
    result = _python(
        """
        import sys
        import keras_ipguard_cli.main
        assert "tensorflow" not in sys.modules
        """
    )
    assert result.returncode == 0, result.stderr
