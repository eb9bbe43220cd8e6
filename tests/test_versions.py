"""The version record taken while pickling on the driver, and its check on the workers before they unpickle.

The comparison rules are tested on records built by hand; the record on real pickles of models that use
a package of their own; the whole path with a real second environment on the executors (an older
scikit-learn, see ``_venvs.py``), on ``local[2]`` and under Spark Connect (every entry point on the
standalone cluster: ``test_cluster.py``).
"""

import io
import logging
import os
import socket
import sys
import textwrap
import uuid
from pathlib import Path

import cloudpickle
import numpy as np
import pytest
import scipy
import sklearn
from _venvs import run_versions_job
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

import sklspark
from sklspark._versions import (
    ERROR_MARKER,
    SKIP_ENV,
    Difference,
    VersionMismatch,
    VersionRecord,
    check_worker,
    combine,
    compare,
    dump_recording,
    mismatch_message,
    python_version,
    worker_versions,
)

X = np.random.default_rng(0).normal(size=(60, 3))
CORE = {"sklearn": "1.7.2", "numpy": "2.1.3", "scipy": "1.15.0", "cloudpickle": "3.1.1", "sklspark": "0.1.0"}


def record(python="3.12", skip=False, **packages):
    return VersionRecord(python=python, packages={**CORE, **packages}, skip=skip)


def worker(python="3.12", **packages):
    return {"python": python, **CORE, **packages}


# --- the rules, on records built by hand -----------------------------------------------------------------


def test_the_same_versions_differ_in_nothing():
    assert compare(record(lightgbm="4.5.0"), worker(lightgbm="4.5.0")) == ([], [])


@pytest.mark.parametrize(
    ("driver", "worker_", "fatal"),
    [
        ({"python": "3.12"}, {"python": "3.11"}, Difference("python", "3.12", "3.11")),
        ({}, {"sklearn": "1.6.1"}, Difference("sklearn", "1.7.2", "1.6.1")),
        ({}, {"sklearn": "1.7.1"}, Difference("sklearn", "1.7.2", "1.7.1")),  # a patch release too
        ({}, {"sklearn": None}, Difference("sklearn", "1.7.2", None)),
        ({}, {"numpy": "1.26.4"}, Difference("numpy", "2.1.3", "1.26.4")),
        ({"lightgbm": "4.5.0"}, {"lightgbm": "4.4.0"}, Difference("lightgbm", "4.5.0", "4.4.0")),
        ({"mymodels": "2.0"}, {"mymodels": None}, Difference("mymodels", "2.0", None)),
    ],
)
def test_fatal_differences(driver, worker_, fatal):
    python = driver.pop("python", "3.12")
    fatal_found, lenient = compare(record(python, **driver), worker(**{"python": "3.12", **worker_}))
    assert fatal_found == [fatal] and lenient == []


@pytest.mark.parametrize(
    "worker_",
    [{"numpy": "2.0.2"}, {"scipy": "1.13.1"}, {"cloudpickle": "2.2.1"}, {"sklspark": "0.0.9"}, {"scipy": None}],
)
def test_smaller_differences_go_on(worker_):
    ((name, version),) = worker_.items()
    assert compare(record(), worker(**worker_)) == ([], [Difference(name, CORE[name], version)])


def test_a_package_without_a_version_on_the_driver_is_not_compared():
    assert compare(record(mymodels=None), worker(mymodels="1.0")) == ([], [])


def test_the_message_names_each_library_both_versions_and_the_fix():
    fatal, _ = compare(record(lightgbm="4.5.0"), worker(sklearn="1.6.1", lightgbm="4.4.0"))
    message = mismatch_message(fatal, "/env/bin/python on host1")
    assert message.startswith(f"{ERROR_MARKER} this Python worker (/env/bin/python on host1) cannot safely load")
    assert "scikit-learn 1.7.2 on the driver, 1.6.1 on this worker; lightgbm 4.5.0 on the driver, 4.4.0" in message
    assert "pip install scikit-learn==1.7.2 lightgbm==4.5.0" in message
    assert "PYSPARK_PYTHON (spark.pyspark.python)" in message
    assert message.endswith(f"set {SKIP_ENV}=1 on the driver.")
    assert "\n" not in message  # the CLI shows the line that carries the marker


def test_a_python_difference_alone_is_fixed_by_another_interpreter():
    fatal, _ = compare(record("3.12"), worker("3.11"))
    message = mismatch_message(fatal, "python3 on host1")
    assert "Python 3.12 on the driver, 3.11 on this worker" in message
    assert "point PYSPARK_PYTHON (spark.pyspark.python) at a Python 3.12 environment" in message
    assert "pip install" not in message


def here(skip=False, **changes):
    """A record of this process's own versions, but for ``changes``."""
    versions = worker_versions(record())
    del versions["python"]
    return VersionRecord(python_version(), {**versions, **changes}, skip=skip)


def test_check_worker_fails_and_passes_with_the_opt_out(monkeypatch, caplog):
    monkeypatch.delenv(SKIP_ENV, raising=False)
    assert check_worker(here(), uuid.uuid4().hex) is None
    with pytest.raises(VersionMismatch, match=f"scikit-learn 0.0.1 on the driver, {sklearn.__version__} on this"):
        check_worker(here(sklearn="0.0.1"), uuid.uuid4().hex)
    with caplog.at_level(logging.WARNING, logger="sklspark"):
        check_worker(here(skip=True, sklearn="0.0.1"), uuid.uuid4().hex)  # skipped on the driver
        monkeypatch.setenv(SKIP_ENV, "1")
        check_worker(here(sklearn="0.0.1"), uuid.uuid4().hex)  # skipped in the worker's environment
    assert [r.getMessage().count(f"(ignored: {SKIP_ENV} is set)") for r in caplog.records] == [1, 1]


def test_smaller_differences_are_logged_once_per_model(caplog):
    token = uuid.uuid4().hex
    with caplog.at_level(logging.WARNING, logger="sklspark"):
        for _ in range(3):
            check_worker(here(scipy="0.1"), token)
    assert [r.getMessage() for r in caplog.records] == [
        f"sklspark: scipy 0.1 on the driver, {scipy.__version__} on this worker "
        f"({sys.executable} on {socket.gethostname()}); loading the model anyway"
    ]


# --- the record, taken while pickling --------------------------------------------------------------------


@pytest.fixture
def user_packages(tmp_path, monkeypatch):
    """Two importable packages of the user's, with fresh names: one with ``__version__``, one without."""
    names = f"models_{uuid.uuid4().hex[:8]}", f"helpers_{uuid.uuid4().hex[:8]}"
    for name, version in zip(names, ('__version__ = "3.1.4"\n', "")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(
            version
            + textwrap.dedent(
                """
                import numpy as np
                from sklearn.base import BaseEstimator, TransformerMixin

                class Doubler(TransformerMixin, BaseEstimator):
                    def fit(self, X, y=None):
                        self.n_features_in_ = X.shape[1]
                        return self

                    def transform(self, X):
                        return X * 2

                def negate(X):
                    return -np.asarray(X)
                """
            )
        )
    monkeypatch.syspath_prepend(str(tmp_path))
    return [__import__(name) for name in names]


def _dump(obj):
    buffer = io.BytesIO()
    versions = dump_recording(obj, buffer)
    return versions, buffer.getvalue()


def test_the_record_has_the_core_versions_and_the_models_own_packages(user_packages):
    models, helpers = user_packages
    estimator = make_pipeline(
        FunctionTransformer(helpers.negate), models.Doubler(), StandardScaler(), LogisticRegression()
    ).fit(X, X[:, 0] > 0)
    versions, payload = _dump(estimator)
    assert versions.python == f"{sys.version_info.major}.{sys.version_info.minor}"
    assert dict(versions.packages) == {
        "sklearn": sklearn.__version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "cloudpickle": cloudpickle.__version__,
        "sklspark": sklspark.__version__,
        models.__name__: "3.1.4",
        helpers.__name__: None,  # a module with no version gets none
    }
    assert versions.model_packages == tuple(sorted([models.__name__, helpers.__name__]))
    np.testing.assert_array_equal(cloudpickle.loads(payload).predict(X), estimator.predict(X))


def test_classes_pickled_by_value_and_the_stdlib_are_not_recorded(user_packages):
    models, _ = user_packages

    class Local(TransformerMixin, BaseEstimator):  # defined here: cloudpickle pickles it by value
        def transform(self, X):
            return X

    cloudpickle.register_pickle_by_value(models)
    try:
        versions, _ = _dump({"local": Local(), "doubler": models.Doubler(), "path": Path("/tmp"), "f": os.path.join})
    finally:
        cloudpickle.unregister_pickle_by_value(models)
    assert versions.model_packages == ()


def test_a_fleets_record_is_the_union_of_its_models(user_packages):
    models, helpers = user_packages
    records = [_dump(models.Doubler())[0], _dump(FunctionTransformer(helpers.negate))[0], _dump(StandardScaler())[0]]
    fleet = combine(records)
    assert fleet.python == python_version()
    assert dict(fleet.packages) == {**records[0].packages, **records[1].packages}
    assert fleet.model_packages == (models.__name__, helpers.__name__)
    assert combine([]) is None


def test_the_opt_out_is_read_on_the_driver(monkeypatch):
    monkeypatch.setenv(SKIP_ENV, "1")
    assert _dump(StandardScaler())[0].skip
    monkeypatch.setenv(SKIP_ENV, "0")
    assert not _dump(StandardScaler())[0].skip


# --- a real second environment on the executors -----------------------------------------------------------


def test_an_older_scikit_learn_on_the_workers_fails_before_loading(old_sklearn_python, tmp_path):
    """A DataFrame, a model with a package of its own, the CLI; with the opt-out the model runs.

    Every entry point (RDD, SQL, streaming too) on the standalone cluster: ``test_cluster.py`` (slow).
    """
    run_versions_job(old_sklearn_python, "quick", "local[2]", tmp_path)


@pytest.mark.slow
@pytest.mark.xdist_group("connect")  # a local Connect server listens on a fixed port
def test_an_older_scikit_learn_on_the_workers_fails_under_spark_connect(old_sklearn_python, tmp_path):
    """The closure and the uploaded artifact file are checked alike."""
    pytest.importorskip("grpc", reason="Spark Connect needs pyspark[connect]")
    run_versions_job(old_sklearn_python, "connect", "", tmp_path)
