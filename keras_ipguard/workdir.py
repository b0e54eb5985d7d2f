"""The checkpoint directory of an unfinished `embed` run, beside its vault.

`VAULT/../.VAULT.embed-work/` holds the run's owner secret, its options, the
key set it chose, Keras' epoch checkpoints and each finished fit's weights
(`EmbedRun._fit`), so `--resume` continues an interrupted run with the same
secret and keys, and does not train again what had finished; it is removed
once the vault is written.
"""

import json
import os
import shutil
import time
from pathlib import Path

from .errors import IPGuardError, StaleCheckpointError
from .vault import OWNER_KEY_BYTES, OWNER_KEY_FILE

OPTIONS_FILE = "options.json"
WORKER_WAIT_SECONDS = 600  # how long a worker waits for the chief's secret and key choice


class WorkDir:
    """An embed run's checkpoint directory: created, reused with `resume`, or refused."""

    def __init__(self, path, owner_key):
        self.path = Path(path)
        self.owner_key = owner_key

    @staticmethod
    def path_for(out):
        out = Path(out)
        return out.parent / f".{out.name}.embed-work"

    @classmethod
    def open(cls, out, settings, resume=False, force=False, chief=True):
        """The work directory of vault `out` for a run with `settings` (a JSON-serialisable dict).

        In a multi-worker run the chief makes it and the other workers (`chief=False`) wait for it: it must
        be on a file system they share."""
        work = cls.path_for(out)
        text = json.dumps(settings, sort_keys=True)
        if not chief:
            made = cls(work, None)
            made.wait_for(work / OPTIONS_FILE)
            if (work / OPTIONS_FILE).read_text() != text:
                raise IPGuardError(f"the chief's checkpoint at {work} was made with other options; start every "
                                   "worker with the same options")
            made.wait_for(work / OWNER_KEY_FILE)
            made.owner_key = (work / OWNER_KEY_FILE).read_bytes()
            return made
        if work.exists():
            recorded = work / OPTIONS_FILE
            if resume and recorded.is_file() and recorded.read_text() == text:
                return cls(work, (work / OWNER_KEY_FILE).read_bytes())
            if resume:
                raise StaleCheckpointError(f"the checkpoint at {work} was made with other options; rerun with the "
                                           "same options, or with --force to start over")
            if not force:
                raise IPGuardError(f"an interrupted embed left a checkpoint at {work}; pass --resume to continue it "
                                   "or --force to start over")
            shutil.rmtree(work)
        work.mkdir(parents=True)
        owner_key = os.urandom(OWNER_KEY_BYTES)
        key_file = work / OWNER_KEY_FILE
        key_file.write_bytes(owner_key)
        os.chmod(key_file, 0o600)
        (work / OPTIONS_FILE).write_text(text)
        return cls(work, owner_key)

    def wait_for(self, path, timeout=WORKER_WAIT_SECONDS):
        """Waits (a worker that is not the chief) for the chief to write `path` in the shared work directory."""
        deadline = time.monotonic() + timeout
        while not Path(path).is_file():
            if time.monotonic() > deadline:
                raise IPGuardError(f"waited {timeout} s for the chief to write {path}; start the chief (task 0) "
                                   "too, and give every worker the same --out on a shared file system")
            time.sleep(0.5)

    def __truediv__(self, name):
        return self.path / name

    def remove(self):
        shutil.rmtree(self.path, ignore_errors=True)
