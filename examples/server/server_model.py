"""The model examples/server serves: a scikit-learn MLP classifier (standard scaling,
then two hidden layers of 128 and 64) trained at import on data it generates, so
nothing is downloaded and every process that imports it gets the same model.

pyscheduler calls ``predict`` with a batch; a server that takes the GIL per request
(and the pure-Python server) calls ``predict_one``. Both go through the same
``predict_proba``: per call it costs ~300 us for one row and ~650 us for a batch of 64 (lists in, lists out)
(2-vCPU VM, CPython 3.11), which is why batching pays.
"""
import os

# One BLAS thread per call: the server's threads are the parallelism, and on a
# 2-core machine BLAS threads would only fight the HTTP threads for the cores.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import warnings  # noqa: E402

import numpy as np  # noqa: E402
from sklearn.datasets import make_classification  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.neural_network import MLPClassifier  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

FEATURES = 16
CLASSES = 4


def _train():
    x, y = make_classification(n_samples=2000, n_features=FEATURES, n_informative=10,
                               n_classes=CLASSES, random_state=0)
    model = make_pipeline(StandardScaler(),
                          MLPClassifier(hidden_layer_sizes=(128, 64), max_iter=150, random_state=0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(x, y)
    return model, x


MODEL, SAMPLES = _train()


def predict(batch):
    """pyscheduler's batched call: a list of feature lists -> a list of probability lists."""
    return MODEL.predict_proba(np.asarray(batch, dtype=np.float64)).tolist()


def predict_one(features):
    """One request's call: a feature list -> its class probabilities."""
    return MODEL.predict_proba(np.asarray([features], dtype=np.float64))[0].tolist()
