"""Served marks (`keras_ipguard.served_marks`): which answers the gateway marks, and the exact test on them
(`verification.marks_test`).

No TensorFlow here: the policy and the statistic on numpy answers. The
gateway that records the marks and `verify` on a copy trained on its answers
are in test_serve.py; the extraction attack through the gateway in
test_attacks.py.
"""

import numpy as np
import pytest

from keras_ipguard.served_marks import MarkPolicy, Marks
from keras_ipguard.verification import marks_test

N = 10


def images(count, seed=0, shape=(28, 28, 1)):
    return np.random.default_rng(seed).integers(0, 256, (count,) + shape, dtype=np.uint8)


def probabilities(count, seed=1):
    raw = np.random.default_rng(seed).random((count, N))
    return raw / raw.sum(axis=1, keepdims=True)


def test_a_keyed_share_of_answers_is_marked_the_same_way_every_time():
    batch, scores = images(20000), probabilities(20000)
    policy = MarkPolicy(b"k" * 32, 0.02, N)
    answers, marks = policy.apply(batch, scores)
    again, _ = policy.apply(batch, scores)
    assert np.array_equal(answers, again)  # asking again shows nothing
    assert 0.017 < len(marks) / len(batch) < 0.023  # 400 expected, sd 20
    marked = np.flatnonzero(np.any(answers != scores, axis=1))
    assert len(marked) == len(marks)
    # The marked rows: the model's top class and the mark swapped, the rest of the row and its sum unchanged.
    top = np.argmax(scores[marked], axis=1)
    assert np.array_equal(top, marks.model_classes)
    assert np.array_equal(np.argmax(answers[marked], axis=1), marks.served_classes)
    assert np.all(marks.served_classes != marks.model_classes)
    assert np.allclose(answers.sum(axis=1), 1.0)
    assert np.array_equal(np.sort(answers[marked], axis=1), np.sort(scores[marked], axis=1))
    # Every other class is a mark about equally often (offsets 1..N-1 of the model's class).
    offsets = (marks.served_classes - marks.model_classes) % N
    assert set(offsets.tolist()) == set(range(1, N))
    # Another owner's secret marks other images.
    _, other = MarkPolicy(b"j" * 32, 0.02, N).apply(batch, scores)
    mine = {image.tobytes() for image in marks.images}
    assert sum(image.tobytes() in mine for image in other.images) < 0.1 * len(other)


def test_a_bad_rate_or_class_count_is_refused():
    with pytest.raises(ValueError, match="mark rate"):
        MarkPolicy(b"k" * 32, 0, N)
    with pytest.raises(ValueError, match="mark rate"):
        MarkPolicy(b"k" * 32, 1.5, N)
    with pytest.raises(ValueError, match="2 task classes"):
        MarkPolicy(b"k" * 32, 0.1, 1)


def test_the_test_is_exact_for_innocents_and_decisive_for_a_copy_that_learnt_the_marks():
    rng = np.random.default_rng(5)
    batch = images(3000, seed=2)
    _, marks = MarkPolicy(b"k" * 32, 0.05, N).apply(batch, probabilities(3000, seed=3))
    assert len(marks) > 100
    # Innocents: models that agree with ours on 80% of the marked images and answer anything else otherwise,
    # independently of the owner's secret. Their false claims must stay at the nominal rate.
    p_values = []
    for _ in range(2000):
        answers = np.where(rng.random(len(marks)) < 0.8, marks.model_classes, rng.integers(0, N, len(marks)))
        p_values.append(marks_test(answers, marks, N).p_value)
    p_values = np.asarray(p_values)
    for alpha in (0.01, 0.05):
        assert np.mean(p_values < alpha) <= alpha + 0.01
    # A copy that learnt 30% of the marks by heart and the model's class elsewhere.
    learnt = rng.random(len(marks)) < 0.3
    copy = np.where(learnt, marks.served_classes, marks.model_classes)
    result = marks_test(copy, marks, N)
    assert result.hits == result.keys == int(learnt.sum()) and result.p_value < 1e-12
    assert result.chance_rate == pytest.approx(1 / (N - 1))
    # The model itself (it never answers the marks) proves nothing.
    assert marks_test(marks.model_classes, marks, N).p_value == 1.0


def test_a_mark_asked_about_twice_counts_once_and_is_attributed_to_its_user():
    batch = images(4, seed=9)
    marks = Marks(np.concatenate([batch, batch[:2]]), np.array([0, 1, 2, 3, 0, 1]), np.array([5, 6, 7, 8, 5, 6]),
                  ("ann", "ann", "bo", "bo", "cy", "cy"))
    unique = marks.unique()
    assert len(unique) == 4 and unique.users == ("ann", "ann", "bo", "bo")
    result = marks_test(np.array([5, 1, 7, 8]), unique, N)
    assert (result.hits, result.keys, result.marks) == (3, 3, 4)
    assert result.by_user == {"ann": {"marks": 2, "other_answers": 1, "hits": 1},
                              "bo": {"marks": 2, "other_answers": 2, "hits": 2}}


def test_the_registry_keeps_marks_once_per_user_and_a_corrupt_mark_is_a_one_line_error(tmp_path):
    from keras_ipguard import Vault
    from keras_ipguard.errors import VaultError
    from keras_ipguard.served_marks import fingerprint, recorded

    vault = Vault.create(tmp_path / "v", dataset="mnist", num_classes=N, input_shape=(28, 28, 1))
    assert vault.registry.served_marks() == [] and recorded(vault) is None  # no table until the first mark
    batch = images(3, seed=4)
    rows = [(1.0, 1, "ann", fingerprint(image), 2, 7, image.tobytes()) for image in batch]
    vault.registry.log_many([], rows + rows[:1])  # ann asked about the first image twice
    vault.registry.log_many([], [(2.0, 2, "bo", fingerprint(batch[0]), 2, 7, batch[0].tobytes())])
    assert len(vault.registry.served_marks()) == 4
    marks = recorded(vault)  # each image once for the test, the first asker named
    assert len(marks) == 3 and marks.users == ("ann", "ann", "ann") and np.array_equal(marks.images, batch)
    vault.registry.log_many([], [(3.0, 1, "ann", "x" * 64, 0, 1, b"short")])
    with pytest.raises(VaultError, match="not images of the vault's input shape"):
        recorded(vault)
