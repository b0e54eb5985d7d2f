import os
import subprocess
import sys
import textwrap


def _python(code, *args, **env):
    """Runs `code` in a fresh Python, as a user's shell would start it: without the variables the package sets."""
    environ = {k: v for k, v in os.environ.items() if k not in ("TF_USE_LEGACY_KERAS", "TF_ENABLE_ONEDNN_OPTS")}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], capture_output=True, text=True,
                          env={**environ, "TF_CPP_MIN_LOG_LEVEL": "3", **env})


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


def test_importing_the_package_turns_on_onednn_unless_the_user_chose():
    code = """
        import os, sys
        if sys.argv[1] == "package":
            from keras_ipguard.backend import tensorflow
            tensorflow()
        from tensorflow.python.util import _pywrap_util_port
        print(os.environ.get("TF_ENABLE_ONEDNN_OPTS"), _pywrap_util_port.IsMklEnabled())
        """

    def onednn(first, **env):
        done = _python(code, first, **env)
        assert done.returncode == 0, done.stderr
        return done.stdout.split()

    # Unset: the package asks for oneDNN, and TensorFlow has it as it does with the variable set by hand.
    assert onednn("package") == ["1", onednn("tensorflow", TF_ENABLE_ONEDNN_OPTS="1")[1]]
    # The user's choice stands: 0 stays 0, and TensorFlow's kernels stay off.
    assert onednn("package", TF_ENABLE_ONEDNN_OPTS="0") == ["0", "False"]
