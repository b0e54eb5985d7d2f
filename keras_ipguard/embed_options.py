"""The settings of one `embed` run (`EmbedOptions`): declared once, read by `embed` and by the CLI."""

import dataclasses

from . import data, schemes, settings
from .architectures import ARCHITECTURES
from .errors import IPGuardError
from .settings import setting
from .sources import DEFAULT_TEST_FRACTION
from .training import STRATEGIES

DEFAULT_KEYS = 100  # the paper's key-set size
DEFAULT_BATCH_SIZE = 128  # per replica


@dataclasses.dataclass
class EmbedOptions:
    """Settings of one `embed` run.

    `scheme` is a scheme name, a `{name, config}` dict or a `schemes.Scheme`
    instance (`schemes.get`); its own settings live in its config, e.g.
    `schemes.ExtraClass(kernel_scale=8)`.

    Example:

    >>> EmbedOptions(dataset="fashion_mnist", epochs=3, scheme="Content").scheme.name
    'content'
    """

    dataset: str = setting(dataclasses.MISSING, "A tfds image-classification dataset (fashion_mnist, cifar10, ...) "
                           "or a folder with one subfolder of images per class (train/ and test/ inside, or not). "
                           "Python: also (images, labels) arrays, a tf.data.Dataset of (image, label) pairs, or "
                           '{"train": ..., "test": ...} of either.')
    image_size: tuple | None = setting(None, "Height and width the images are resized to.", kind=int, low=1, nargs=2,
                                       metavar="H W",
                                       default_text="the base model's input, else the dataset's own size (a "
                                       "folder: its most common)")
    test_fraction: float = setting(DEFAULT_TEST_FRACTION, "Share of each class held out for testing where the data "
                                   "has no test split.", kind=float, low=0, high=1, open_bounds=True)
    skip_bad_images: bool = setting(False, "Skip unreadable image files of a folder (counted in the report) instead "
                                    "of refusing them.")
    data_dir: str | None = setting(None, "Prepared tfds data directory (else TFDS_DATA_DIR, else download).",
                                   kind="dir")
    epochs: int | None = setting(None, "Training epochs, each a pass over every task image (keys and negatives "
                                 "come on top).", kind=int, low=1,
                                 default_text="by architecture; 2 with --base-model")
    keys: int = setting(DEFAULT_KEYS, "Number of key images K.", kind=int, low=1)
    key_source: str | None = setting(
        None, "Where key images come from (schemes that use them): a tfds dataset or a folder of your own "
        "out-of-distribution images.",
        default_text="mnist for grayscale tasks (fashion_mnist for mnist), cifar100 for RGB")
    arch: str = setting("auto", "Architecture of the zoo (auto: by input size).", choices=("auto", *ARCHITECTURES))
    batch_size: int = setting(DEFAULT_BATCH_SIZE, "Batch size per replica.", kind=int, low=2)
    seed: int = setting(0, "Seed of initialisation and shuffling (keys come from the owner secret).", kind=int)
    base_model: str | None = setting(None, "Protect this trained N-class Keras model instead of training from scratch.",
                                     kind="path")
    strategy: str = setting("auto", "tf.distribute strategy (auto: all GPUs, or the default strategy on CPU).",
                            choices=STRATEGIES)
    baseline: bool = setting(False, "Also train without the watermark to measure fidelity_drop.")
    max_train_examples: int | None = setting(None, "Use only the first M training examples.", kind=int, low=1)
    max_test_examples: int | None = setting(None, "Use only the first M test examples.", kind=int, low=1)
    key_share: float | None = setting(None, "Share of each batch given to key samples.", kind=float, low=0, high=0.5,
                                      open_bounds="low", default_text=f"1/{round(1 / data.DEFAULT_KEY_SHARE)}, raised "
                                      f"up to 1/{round(1 / data.MAX_AUTO_KEY_SHARE)} in short runs until each key "
                                      f"is in {data.MIN_KEY_VIEWS} batches")
    learning_rate: float | None = setting(None, "Initial learning rate.", kind=float, low=0, open_bounds=True,
                                          default_text="by architecture")
    lr_cycles: int | None = setting(None, "Cosine learning-rate cycles over the training: 1 decays once; C cycles "
                                    "restart at the initial rate C - 1 times, every 1/C of the steps unless "
                                    "--lr-cycle-growth (warm restarts: an informed thief's fine-tuning keeps more "
                                    "of the key code; docs/results).", kind=int, low=1,
                                    default_text="3 for the extra-class scheme with the key code on the small CNN "
                                    f"where each cycle still shows each key in {data.MIN_KEY_VIEWS} batches (full "
                                    "runs); 1 otherwise")
    lr_cycle_growth: float = setting(1.0, "With --lr-cycles above 1, each cycle lasts this many times the one before "
                                     "(1: equal cycles; 2: each twice as long as the last, so the longest decay "
                                     "comes last).", kind=float, low=0, open_bounds=True)
    scheme: object = "extra-class"
    verbose: int = 1

    def __post_init__(self):
        settings.check(self)
        self.scheme = schemes.get(self.scheme)
        if self.base_model and not self.scheme.protects_base_models:
            raise IPGuardError(f"the {self.scheme.name} scheme cannot protect a --base-model (only "
                               f"{', '.join(n for n in schemes.names() if schemes.get(n).protects_base_models)} can); "
                               "drop --scheme or --base-model")
        if self.lr_cycle_growth != 1 and (self.lr_cycles or 1) == 1:  # the automatic choice may be one decay
            raise IPGuardError(f"--lr-cycle-growth {self.lr_cycle_growth:g} needs more than one cycle: add --lr-cycles "
                               "(3, for instance) with it or drop --lr-cycle-growth")

    def to_config(self):
        """JSON-serialisable settings (the scheme as `{name, config}`, in-memory data by its type), no `verbose`."""
        config = settings.to_config(self)
        dataset = self.dataset if isinstance(self.dataset, str) else f"<in-memory {type(self.dataset).__name__}>"
        config.update(dataset=dataset, scheme=self.scheme.to_record(), verbose=None)
        return config
