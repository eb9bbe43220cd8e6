"""Every estimator scikit-learn ships, fitted on small data, for the distribute() sweep.

``sweep_cases()`` returns ``(name, method)`` pairs for every row-wise deterministic prediction-time
method of every estimator that can be fitted on a numeric matrix; ``EXCLUDED`` and ``NOT_ROW_WISE``
say why the others are left out.
"""

from __future__ import annotations

import functools
import warnings

import numpy as np
from sklearn.base import is_regressor
from sklearn.decomposition import PCA
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.preprocessing import StandardScaler
from sklearn.tree import DecisionTreeClassifier
from sklearn.utils import all_estimators, get_tags

METHODS = (
    "predict",
    "predict_proba",
    "predict_log_proba",
    "decision_function",
    "transform",
    "score_samples",
    "kneighbors",
    "radius_neighbors",
    "apply",
)

#: Estimators that take something other than a numeric feature matrix, and why (text: see TEXT_CASES).
EXCLUDED = {
    "CountVectorizer": "takes text: swept in TEXT_CASES",
    "TfidfVectorizer": "takes text: swept in TEXT_CASES",
    "HashingVectorizer": "takes text: swept in TEXT_CASES",
    "FeatureHasher": "takes an iterable of strings or a dict per sample: no input form hands those to a model",
    "DictVectorizer": "takes dicts: no input form hands dicts to a model (RDD dicts are read by feature_names_in_)",
    "LabelEncoder": "transforms targets (1-D)",
    "LabelBinarizer": "transforms targets (1-D)",
    "MultiLabelBinarizer": "transforms targets (label sets)",
    "ColumnTransformer": "covered by the Pipeline tests; needs a column specification",
    "SparseCoder": "needs a dictionary built for the data",
    "KernelCenterer": "takes a kernel matrix",
    "PatchExtractor": "takes images",
}

#: Methods whose result for a row is not a function of that row alone, and why.
NOT_ROW_WISE = {
    ("BernoulliRBM", "score_samples"): "corrupts a random feature of each row at every call",
    ("MiniBatchNMF", "transform"): "solves one optimisation over the whole batch; stops on a batch-wide criterion",
}

#: Estimators that only support binary targets.
_BINARY = {"FixedThresholdClassifier", "TunedThresholdClassifierCV", "ClassifierChain"}

_CLF = LogisticRegression(max_iter=500)
_REG = LinearRegression()

#: Constructor arguments for estimators that have required ones, or whose defaults cannot predict.
PARAMS = {
    "ClassifierChain": {"estimator": _CLF},
    "RegressorChain": {"estimator": _REG},
    "MultiOutputClassifier": {"estimator": _CLF},
    "MultiOutputRegressor": {"estimator": _REG},
    "OneVsOneClassifier": {"estimator": _CLF},
    "OneVsRestClassifier": {"estimator": _CLF},
    "OutputCodeClassifier": {"estimator": _CLF, "random_state": 0},
    "FeatureUnion": {"transformer_list": [("pca", PCA(2))]},
    "Pipeline": {"steps": [("scale", StandardScaler()), ("clf", _CLF)]},
    "GridSearchCV": {"estimator": _CLF, "param_grid": {"C": [0.1, 1.0]}},
    "RandomizedSearchCV": {"estimator": _CLF, "param_distributions": {"C": [0.1, 1.0]}, "n_iter": 2, "random_state": 0},
    "RFE": {"estimator": _CLF, "n_features_to_select": 3},
    "RFECV": {"estimator": _CLF, "cv": 3},
    "SelectFromModel": {"estimator": _CLF},
    "SequentialFeatureSelector": {"estimator": _CLF, "n_features_to_select": 2, "cv": 3},
    "StackingClassifier": {"estimators": [("lr", _CLF), ("dt", DecisionTreeClassifier(random_state=0))]},
    "StackingRegressor": {"estimators": [("lr", _REG)]},
    "VotingClassifier": {
        "estimators": [("lr", _CLF), ("dt", DecisionTreeClassifier(random_state=0))],
        "voting": "soft",
    },
    "VotingRegressor": {"estimators": [("lr", _REG)]},
    "FrozenEstimator": {"estimator": LogisticRegression(max_iter=500).fit(np.eye(6), [0, 1, 2, 0, 1, 2])},
    "TunedThresholdClassifierCV": {"estimator": _CLF},
    "FixedThresholdClassifier": {"estimator": _CLF},
    "SelfTrainingClassifier": {"estimator": _CLF},
    "LocalOutlierFactor": {"novelty": True},
    "RadiusNeighborsClassifier": {"outlier_label": "most_frequent"},
    "SVC": {"probability": True, "random_state": 0},
    "NuSVC": {"probability": True, "random_state": 0},
    "CCA": {"n_components": 1},
    "PLSCanonical": {"n_components": 1},
    "PLSSVD": {"n_components": 1},
    "GaussianRandomProjection": {"n_components": 3},
    # Fewer folds, candidates and boosting rounds than the defaults: the sweep runs at collection in every
    # test process, and these four fits cost 20 s of it; what is checked (distribute() equals the fitted
    # model's own call) does not depend on them.
    "LogisticRegressionCV": {"Cs": 3, "cv": 3},
    "HistGradientBoostingClassifier": {"max_iter": 10},
    "SparseRandomProjection": {"n_components": 3},
}

N_SAMPLES, N_FEATURES = 120, 6


def make_data(seed: int = 0):
    """Positive features (some estimators need them), 3-class and positive continuous targets."""
    rng = np.random.default_rng(seed)
    X = rng.uniform(0.0, 1.0, size=(N_SAMPLES, N_FEATURES))
    y_class = (X[:, 0] * 3).astype(int)
    y_reg = np.exp(X @ rng.normal(size=N_FEATURES) + 0.1 * rng.normal(size=N_SAMPLES))
    return X, y_class, y_reg


def _target(name: str, est, y_class: np.ndarray, y_reg: np.ndarray) -> np.ndarray:
    y = y_reg if is_regressor(est) or name.startswith(("CCA", "PLS")) else y_class
    if name in _BINARY:
        y = y % 2
    if not get_tags(est).target_tags.single_output:  # multi-task / multi-output models
        y = np.column_stack([y, y[::-1]])
    return y


@functools.cache
def fitted(name: str):
    """The estimator ``name`` fitted on :func:`make_data`, or the reason it cannot be."""
    cls = dict(all_estimators())[name]
    X, y_class, y_reg = make_data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = cls(**PARAMS.get(name, {}))
    if "random_state" in est.get_params():
        est.set_params(random_state=0)
    if name == "IsotonicRegression":
        X = X[:, :1]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return est.fit(X, _target(name, est, y_class, y_reg))
    except Exception as exc:  # noqa: BLE001 - reported as the reason
        return f"fit failed on the sweep data: {type(exc).__name__}: {exc}"


def sweep_cases():
    """``(name, method)`` for every method of every estimator fitted by :func:`fitted`."""
    cases = []
    for name, _ in all_estimators():
        if name in EXCLUDED:
            continue
        est = fitted(name)
        if isinstance(est, str):
            cases.append((name, None))
            continue
        cases.extend((name, m) for m in METHODS if callable(getattr(est, m, None)) and (name, m) not in NOT_ROW_WISE)
    return cases


#: Estimators that take a string column as documents (layout "text"): name -> constructor arguments.
TEXT_CASES = {
    "CountVectorizer": {},
    "TfidfVectorizer": {"sublinear_tf": True},
    "HashingVectorizer": {"n_features": 256},
}

_WORDS = ("red", "green", "blue", "late", "refund", "fast", "slow", "happy", "app", "call", "bill", "price")


def make_text(n: int = N_SAMPLES, seed: int = 0) -> list[str]:
    """Short documents from a small vocabulary."""
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(_WORDS, int(rng.integers(1, 8)))) for _ in range(n)]


@functools.cache
def fitted_text(name: str):
    """The text estimator ``name`` fitted on :func:`make_text`."""
    cls = dict(all_estimators())[name]
    return cls(**TEXT_CASES[name]).fit(make_text())
