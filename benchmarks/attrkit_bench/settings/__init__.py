"""The registry of benchmark settings: ``{name: Setting}``, as ``attrkit bench --list`` shows it."""

from __future__ import annotations

from attrkit_bench.problem import Setting
from attrkit_bench.settings import adult, bach_music, fmnist_cnn, mnist_lr, mnist_mlp, shakespeare_gpt

__all__ = ["SETTINGS", "get_setting"]

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
    )
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
