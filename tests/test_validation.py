import pytest

from digitgen.data.datasets import get_dataset
from digitgen.data.validation import summary_table
from digitgen.data.validation import validate_tables as _validate
from tasks.validate import DataValidationError, artifact_rows, raise_failures

MNIST = get_dataset("mnist")


def validate_tables(tables):
    return _validate(MNIST, tables, {"train": 60_000, "test": 10_000})


@pytest.fixture(scope="module")
def tables(mnist):
    return {
        "train": summary_table(mnist.train_images, mnist.train_labels),
        "test": summary_table(mnist.test_images, mnist.test_labels),
    }


def _failed(report):
    return {(r["split"], r["expectation"], r["kwargs"].get("column")) for r in report.failures}


def test_real_mnist_passes(tables):
    report = validate_tables(tables)
    assert report.success, report.failures
    assert len(report.results) >= 30


def test_corrupted_tables_fail_naming_the_expectation(tables):
    bad = {k: v.copy() for k, v in tables.items()}
    bad["test"].loc[:9, "label"] = 11  # labels out of range
    bad["train"].loc[:4, "max"] = 0.0  # blank images
    bad["train"].loc[:4, "ink"] = 0.0
    bad["train"].loc[5, "height"] = 27  # wrong image size
    report = validate_tables(bad)
    assert not report.success
    failed = _failed(report)
    assert ("test", "expect_column_values_to_be_between", "label") in failed
    assert ("test", "expect_column_distinct_values_to_equal_set", "label") in failed
    assert ("train", "expect_column_values_to_be_between", "ink") in failed
    assert ("train", "expect_column_values_to_be_between", "height") in failed
    with pytest.raises(DataValidationError, match="no model was trained") as err:
        raise_failures(artifact_rows(report), "MNIST")
    assert "label" in str(err.value) and "ink" in str(err.value)


def test_missing_class_and_wrong_count_fail(tables):
    train = tables["train"]
    bad = {"train": train[train["label"] != 3].reset_index(drop=True), "test": tables["test"]}
    report = validate_tables(bad)
    failed = _failed(report)
    assert ("train", "expect_table_row_count_to_equal", None) in failed
    assert any(r["table"] == "classes" and r["split"] == "train" for r in report.failures)
    assert not any(r["split"] == "test" for r in report.failures)


def test_changed_checks_change_the_validation_cache_key(monkeypatch):
    """Validation is cached per data fingerprint and per suite: a tightened threshold is not skipped."""
    import dataclasses

    from tasks import validate

    params = {"dataset": "mnist", "fingerprint": "abc"}
    before = validate._suite_key(None, params)
    assert validate._suite_key(None, params) == before
    assert validate._suite_key(None, {**params, "fingerprint": "abd"}) != before, "other data"
    spec = get_dataset("mnist")
    monkeypatch.setattr(validate, "get_dataset", lambda name: dataclasses.replace(spec, ink_range=(0.01, 0.6)))
    assert validate._suite_key(None, params) != before, "a tightened expectation"


def test_image_statistics_are_the_same_computed_a_chunk_at_a_time():
    """A training set's statistics are computed a few thousand images at a time (memory does not grow with it);
    every figure equals the one computed on all images at once."""
    import torch

    from digitgen.data.validation import STATS_CHUNK, _image_stats, image_stats

    images = torch.randint(
        0, 256, (2 * STATS_CHUNK + 17, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    chunked, whole = image_stats(images), _image_stats(images)
    assert chunked.keys() == whole.keys() and all(torch.equal(chunked[k], whole[k]) for k in whole)
