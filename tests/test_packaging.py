"""What a user installs: the public API, loaded lazily, and the console script from a non-editable install."""

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _python(code, **kwargs):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, **kwargs)


def test_the_public_api_is_importable_and_loads_tensorflow_only_when_used():
    result = _python(
        """
        import sys, types
        import keras_ipguard as ipg
        assert callable(ipg.verify) and callable(ipg.authenticate) and callable(ipg.export)
        assert isinstance(ipg.schemes, types.ModuleType) and isinstance(ipg.attacks, types.ModuleType)
        assert ipg.EmbedOptions(dataset="mnist").scheme.name == "extra-class"
        assert ipg.Vault.open and "tensorflow" not in sys.modules, "TensorFlow imported before it was needed"
        assert callable(ipg.embed) and "tensorflow" in sys.modules
        import keras_ipguard.attacks.pruning as pruning, keras_ipguard.verification as verification
        assert isinstance(pruning, types.ModuleType) and isinstance(verification, types.ModuleType)
        assert callable(ipg.verify)  # importing the module did not shadow the function
        print("ok")
        """
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]


def test_a_non_editable_install_puts_the_cli_under_the_project_s_name(tmp_path):
    source = tmp_path / "source"
    for name in ("keras_ipguard", "cli"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("setup.py", "setup.cfg", "README.md"):
        shutil.copy(ROOT / name, source / name)
    target = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                              "--target", str(target), str(source)], capture_output=True, text=True)
    assert install.returncode == 0, install.stderr[-3000:]
    assert (target / "keras_ipguard_cli" / "main.py").is_file() and not (target / "cli").exists()
    env = {**os.environ, "PYTHONPATH": str(target)}
    where = _python("import keras_ipguard_cli.main as m; print(m.__file__)", env=env, cwd=tmp_path)
    assert where.stdout.strip().startswith(str(target)), where.stderr[-2000:]
    for args in (["--version"], ["attack", "--help"]):
        run = subprocess.run([str(target / "bin" / "ipguard"), *args], capture_output=True, text=True, env=env,
                             cwd=tmp_path)
        assert run.returncode == 0, run.stderr[-2000:]
    assert "ipguard, version" in subprocess.run([str(target / "bin" / "ipguard"), "--version"], capture_output=True,
                                                text=True, env=env, cwd=tmp_path).stdout
    assert "query-modification" in run.stdout and "truncate" in run.stdout
