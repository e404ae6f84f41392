"""alt-profanity-check's shipped model, evaluated without sklearn's per-call overhead. No asyncio.

The package's model is a TF-IDF vectorizer (word unigrams, l2 norm) feeding five calibrated
linear SVMs whose sigmoid probabilities are averaged. sklearn spends about 35 ms of checks
per `predict_proba` call whatever the batch size, which alone would break a 20 ms verdict
budget, so the same arithmetic is done here over the package's own fitted weights:
p = mean_k 1 / (1 + exp(a_k (x . w_k + c_k) + b_k)), x the l2-normalised tf-idf row.
tests check that it agrees with `profanity_check.predict_prob` to 1e-9.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np


class ProfanityModel:
    """predict_prob over a list of texts; build with `load()` (imports sklearn: seconds)."""

    def __init__(
        self,
        vocabulary: Mapping[str, int],
        weights: np.ndarray,  # (V, K): idf * the k-th SVM's coefficient
        idf: np.ndarray,  # (V,)
        calibration: np.ndarray,  # (3, K): intercept, a, b of each calibrated SVM
        *,
        token_pattern: str,
        lowercase: bool,
    ) -> None:
        self._vocabulary = vocabulary
        self._weights = weights
        self._idf = idf
        self._intercept, self._a, self._b = calibration
        self._token = re.compile(token_pattern)
        self._lowercase = lowercase

    @classmethod
    def load(cls) -> ProfanityModel:
        from profanity_check import profanity_check as package

        vectorizer, model = package.vectorizer, package.model
        params = vectorizer.get_params()
        expected = {"analyzer": "word", "ngram_range": (1, 1), "norm": "l2", "use_idf": True,
                    "sublinear_tf": False, "binary": False}  # fmt: skip
        if any(params[key] != value for key, value in expected.items()):
            raise RuntimeError(f"alt-profanity-check's vectorizer changed: {params}")
        idf = np.asarray(vectorizer.idf_, dtype=np.float64)
        svms = model.calibrated_classifiers_
        coef = np.stack([c.estimator.coef_[0] for c in svms], axis=1)  # (V, K)
        calibration = np.array(
            [
                [c.estimator.intercept_[0] for c in svms],
                [c.calibrators[0].a_ for c in svms],
                [c.calibrators[0].b_ for c in svms],
            ],
            dtype=np.float64,
        )
        return cls(
            dict(vectorizer.vocabulary_),
            idf[:, None] * coef,
            idf,
            calibration,
            token_pattern=params["token_pattern"],
            lowercase=params["lowercase"],
        )

    def predict_prob(self, texts: Sequence[str]) -> list[float]:
        if not texts:
            return []
        rows: list[int] = []
        columns: list[int] = []
        counts: list[int] = []
        vocabulary = self._vocabulary
        for row, text in enumerate(texts):
            tokens = self._token.findall(text.lower() if self._lowercase else text)
            for column, count in Counter(vocabulary[t] for t in tokens if t in vocabulary).items():
                rows.append(row)
                columns.append(column)
                counts.append(count)
        num_texts = len(texts)
        row_of = np.asarray(rows, dtype=np.intp)
        column_of = np.asarray(columns, dtype=np.intp)
        count_of = np.asarray(counts, dtype=np.float64)
        norms = np.sqrt(
            np.bincount(row_of, (count_of * self._idf[column_of]) ** 2, minlength=num_texts)
        )  # (B,)
        contributions = count_of[:, None] * self._weights[column_of]  # (nnz, K)
        raw = np.stack(
            [
                np.bincount(row_of, contributions[:, k], minlength=num_texts)
                for k in range(contributions.shape[1])
            ],
            axis=1,
        )  # (B, K)
        scale = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
        decision = raw * scale[:, None] + self._intercept[None, :]
        probs = 1.0 / (1.0 + np.exp(self._a[None, :] * decision + self._b[None, :]))
        return [float(p) for p in probs.mean(axis=1)]
