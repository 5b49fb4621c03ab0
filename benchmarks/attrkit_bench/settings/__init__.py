"""The registry of benchmark settings: ``{name: Setting}``, as ``attrkit bench --list`` shows it.

:data:`CLASSIFIERS` also keeps the declarations of the classifier settings by name: the
studies that retrain or produce members (ensembles, GGDA) need a setting's model
constructor and recipes, not only its prepared problem.
"""

from __future__ import annotations

from attrkit_bench.problem import Setting
from attrkit_bench.settings import (
    adult, bach_music, fmnist_cnn, minilm_sentiment, mnist_lr, mnist_mlp, shakespeare_gpt,
)
from attrkit_bench.settings.classifier import ClassifierSetting

__all__ = ["CLASSIFIERS", "SETTINGS", "get_classifier", "get_setting"]

#: Every setting ``attrkit bench`` can run, by name.
SETTINGS: dict[str, Setting] = {
    s.name: s
    for s in (
        mnist_lr.SETTING,
        mnist_mlp.SETTING,
        fmnist_cnn.SETTING,
        adult.LR.setting(),
        adult.MLP.setting(),
        shakespeare_gpt.SETTING,
        bach_music.SETTING,
        minilm_sentiment.SETTING,
    )
}
#: The classifier settings' declarations, by name.
CLASSIFIERS: dict[str, ClassifierSetting] = {
    d.name: d for d in (mnist_lr.DECLARATION, mnist_mlp.DECLARATION, fmnist_cnn.DECLARATION, adult.LR, adult.MLP)
}


def get_setting(name: str) -> Setting:
    """The setting called ``name``.

    Raises:
        LookupError: no such setting; the message lists the known ones.
    """
    try:
        return SETTINGS[name]
    except KeyError:
        raise LookupError(f"unknown benchmark setting {name!r}; available: {', '.join(sorted(SETTINGS))}") from None


def get_classifier(name: str) -> ClassifierSetting:
    """The declaration of classifier setting ``name``.

    Raises:
        LookupError: no such classifier setting; the message lists the known ones.
    """
    try:
        return CLASSIFIERS[name]
    except KeyError:
        raise LookupError(f"no classifier setting {name!r}; known: {', '.join(CLASSIFIERS)}") from None
