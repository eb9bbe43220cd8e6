"""distribute() equals the in-process call for every estimator/method pair scikit-learn ships."""

import warnings

import pytest
from _estimators import EXCLUDED, METHODS, NOT_ROW_WISE, fitted, make_data, sweep_cases
from _helpers import assert_same, collect_df, collect_rdd, make_input

from sklspark import distribute
from sklspark._outputs import default_names, output_parts

CASES = sweep_cases()


def _query(name):
    X = make_data()[0]  # the training rows: encoders refuse unseen categories
    return X[:, :1] if name == "IsotonicRegression" else X


@pytest.mark.parametrize("kind", ["rdd-ndarray", "df-array"])
@pytest.mark.parametrize(("name", "method"), CASES, ids=[f"{n}.{m}" for n, m in CASES])
def test_sweep_matches_in_process(spark, name, method, kind):
    est = fitted(name)
    if method is None:
        pytest.fail(f"{name} {est}")
    X = _query(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = getattr(est, method)(X)
        data = make_input(spark, X, kind)
        result = distribute(est, method, data, chunk_size=16)
        if kind.startswith("rdd"):
            got = collect_rdd(result, expected)
        else:
            got = collect_df(result, default_names(method, len(output_parts(expected))), expected)
    assert_same(got, expected)


def test_sweep_covers_every_estimator():
    """Every estimator is swept, excluded with a reason, or has no prediction-time method."""
    from sklearn.utils import all_estimators

    swept = {n for n, _ in CASES} | {n for n, _ in NOT_ROW_WISE}
    for name, _ in all_estimators():
        if name in swept or name in EXCLUDED:
            continue
        est = fitted(name)
        assert not any(callable(getattr(est, m, None)) for m in METHODS), name
    assert len(CASES) > 300
