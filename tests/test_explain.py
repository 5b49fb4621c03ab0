"""Explanations: a tiny image problem, a tiny text problem, a table, and ``attrkit bench --explain``."""

from __future__ import annotations

import base64
import struct
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import attrkit
from attrkit.explanations.figure import png_bytes
from attrkit.explanations.items import as_image, infer_kind
from attrkit.testing import toy_problem

pytestmark = pytest.mark.usefixtures("one_thread")

PNG = b"\x89PNG\r\n\x1a\n"
WORDS = ("good", "great", "fine", "bad", "awful", "poor", "the", "film")


class Page(HTMLParser):
    """Every tag's attributes and the page's text."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _parse(page: str) -> Page:
    parser = Page()
    parser.feed(page)
    parser.close()
    return parser


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def _fitted(x: torch.Tensor, y: torch.Tensor, model: torch.nn.Module, n_test: int, spec: str = "grad-dot"):
    """``(attributor, test loader, train loader)`` over the last ``n_test`` examples as tests."""
    train = DataLoader(TensorDataset(x[:-n_test], y[:-n_test]), batch_size=7)
    test = DataLoader(TensorDataset(x[-n_test:], y[-n_test:]), batch_size=3)
    task = attrkit.AttributionTask(model=model, loss_fn=attrkit.cross_entropy)
    return attrkit.compose(spec, task).fit(train), test, train


@pytest.fixture(scope="module")
def images():
    """30 train and 4 test images ``[1, 6, 6]`` of 3 classes, logistic regression on the pixels."""
    gen = torch.Generator().manual_seed(0)
    y = torch.arange(34) % 3
    stripes = (y[:, None, None, None] == torch.arange(6)[None, None, :, None] % 3).float()  # class c: rows c, c + 3
    x = torch.rand(34, 1, 6, 6, generator=gen) * 0.5 + 0.5 * stripes
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(36, 3))
    return _fitted(x, y, model, 4)


class Bag(torch.nn.Module):
    """Mean of word embeddings, then a linear layer: ``LongTensor[b, T] -> Tensor[b, 2]``."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.out = torch.nn.Embedding(len(WORDS), 4), torch.nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.embed(x).mean(1))


@pytest.fixture(scope="module")
def sentences():
    """20 train and 3 test sentences of 5 words, label 1 when they hold more bad words."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(0, len(WORDS), (23, 5), generator=gen)
    y = ((x >= 3) & (x <= 5)).sum(1).gt(((x <= 2).sum(1))).long()
    torch.manual_seed(0)
    return _fitted(x, y, Bag(), 3)


def _decode(item: tuple[torch.Tensor, torch.Tensor]) -> str:
    return " ".join(WORDS[i] for i in item[0].tolist())


def _same_as_top_k(explanation: attrkit.Explanation, top: attrkit.TopK) -> None:
    for t, target in enumerate(explanation.targets):
        assert target.test.index == t
        assert [e.index for e in target.proponents] == top.proponents[t].tolist()
        assert [e.index for e in target.opponents] == top.opponents[t].tolist()
        assert [e.score for e in target.proponents] == pytest.approx(top.proponent_scores[t].tolist())
        assert [e.score for e in target.opponents] == pytest.approx(top.opponent_scores[t].tolist())


def _self_contained(page: str) -> Page:
    for outside in ("http://", "https://", 'src="//', "<script", "<link"):
        assert outside not in page
    return _parse(page)


def test_image_explanation_html_and_png(images, tmp_path: Path) -> None:
    attributor, test, train = images
    explanation = attrkit.explain(attributor, test, train, k=3, class_names=["zero", "one", "two"])
    assert explanation.kind == "image"  # [1, 6, 6] floats: inferred
    _same_as_top_k(explanation, attributor.top_k(test, 3))
    assert all(t.prediction is not None for t in explanation.targets)
    assert [e.label for e in explanation.targets[0].proponents] == [int(train.dataset[e.index][1])
                                                                    for e in explanation.targets[0].proponents]

    page = _self_contained(explanation.to_html(tmp_path / "e.html"))
    assert (tmp_path / "e.html").read_text(encoding="utf-8") == explanation.to_html()
    ids = {a.get("id") for tag, a in page.tags if tag == "section"}
    assert ids == {f"test-{t}" for t in range(4)}
    sources = [a["src"] for tag, a in page.tags if tag == "img"]
    assert len(sources) == 4 * (1 + 2 * 3)
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        assert _png_size(base64.b64decode(src.split(",", 1)[1])) == (18, 18)  # 6 x 6 pixels, 3x
    text = "".join(page.text)
    assert f"{explanation.targets[2].opponents[0].score:+.4g}" in text and "zero" in text

    path = explanation.to_png(tmp_path / "e.png")
    data = path.read_bytes()
    width, height = _png_size(data)
    assert 400 <= width <= 2000 and 200 <= height <= 1500 and len(data) < 200_000
    assert "image 6x6" in explanation.to_text()


def test_text_explanation_lists_the_sentences_with_scores(sentences, tmp_path: Path) -> None:
    attributor, test, train = sentences
    explanation = attrkit.explain(attributor, test, train, k=2, decode=_decode, class_names=["good", "bad"])
    assert explanation.kind == "text"
    _same_as_top_k(explanation, attributor.top_k(test, 2))
    report = explanation.to_text()
    lines = report.splitlines()
    for target in explanation.targets:
        assert f"  {target.test.text}" in lines
        for e in (*target.proponents, *target.opponents):
            assert e.text == _decode(train.dataset[e.index])
            assert f"    {e.score:+10.4g}  train #{e.index} [{explanation.label_name(e.label)}]  {e.text}" in lines

    page = _self_contained(explanation.to_html())
    assert not [tag for tag, _ in page.tags if tag == "img"]
    text = "".join(page.text)
    assert all(t.test.text in text and all(e.text in text for e in t.proponents) for t in explanation.targets)
    with pytest.raises(attrkit.ArgumentError, match="to_png draws images"):
        explanation.to_png(tmp_path / "no.png")
    # without decode, token ids are the text (an integer [T] input is text)
    assert attrkit.explain(attributor, test, train, k=1).targets[0].test.text == " ".join(
        map(str, test.dataset[0][0].tolist()))


def test_table_rows_show_the_features_that_differ_most(tmp_path: Path) -> None:
    toy = toy_problem(hidden=0)
    test, train = toy.test_loader(), toy.train_loader()
    attributor = attrkit.compose("grad-dot", toy.task).fit(train)
    names = ["age", "income", "hours", "debt", "score"]
    explanation = attrkit.explain(attributor, test, train, k=2, names=names)
    assert explanation.kind == "table"
    _same_as_top_k(explanation, attributor.top_k(test, 2))
    page = _parse(explanation.to_html())
    assert {"age", "income", "hours", "debt", "score"} <= set(page.text)
    assert "differs in: " in explanation.to_text()
    with pytest.raises(attrkit.ArgumentError, match="names must name each of the 5 features"):
        attrkit.explain(attributor, test, train, k=2, names=names[:3])


def test_rps_without_top_k_falls_back_to_attribute(images) -> None:
    _, test, train = images
    attributor = attrkit.compose({"method": "rps"}, attributor_task(images)).fit(train)
    scores = attributor.attribute(test)
    explanation = attrkit.explain(attributor, test, train, k=2)
    assert [e.index for e in explanation.targets[1].proponents] == scores[1].topk(2).indices.tolist()
    assert [e.index for e in explanation.targets[1].opponents] == scores[1].topk(2, largest=False).indices.tolist()


def attributor_task(fitted) -> attrkit.AttributionTask:
    return fitted[0].task


def test_refusals(images, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    attributor, test, train = images
    with pytest.raises(attrkit.ArgumentError, match="kind must be"):
        attrkit.explain(attributor, test, train, kind="video")
    with pytest.raises(ValueError):
        attrkit.explain(attributor, test, train, k=31)
    grouped = attrkit.compose({"method": "grad-dot", "grouper": {"name": "random", "n_groups": 5}},
                              attributor.task).fit(train)
    with pytest.raises(attrkit.ArgumentError, match="groups"):
        attrkit.explain(grouped, test, train)
    explanation = attrkit.explain(attributor, test, train, k=1)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match="pip install matplotlib"):
        explanation.to_png(tmp_path / "e.png")


def test_the_kind_rule_and_image_shapes() -> None:
    assert infer_kind(torch.zeros(7, dtype=torch.long)) == "text"
    assert [infer_kind(torch.zeros(s)) for s in ((5, 5), (3, 8, 8), (8, 8, 3), (784,))] == ["image"] * 3 + ["table"]
    with pytest.raises(attrkit.ArgumentError, match="kind="):
        infer_kind(torch.zeros(2, 3, 4, 5))
    assert as_image(torch.rand(784)).shape == (28, 28)
    assert as_image(torch.rand(3 * 64)).shape == (8, 8, 3)
    stretched = as_image(torch.tensor([[-2.0, 0.0], [2.0, 6.0]]))
    assert stretched.min() == 0 and stretched.max() == 1
    assert as_image(torch.tensor([[0, 255]], dtype=torch.uint8)).tolist() == [[0.0, 1.0]]
    with pytest.raises(attrkit.ArgumentError, match="s\\*s"):
        as_image(torch.rand(10))
    assert _png_size(png_bytes(torch.rand(3, 5), scale=2)) == (10, 6)


def test_bench_explain_writes_html_and_png(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    from attrkit_bench.cli import main
    from attrkit_bench.settings import classifier

    gen = torch.Generator().manual_seed(0)  # 8 x 8 "images" of 10 classes, flat as MNIST's rows
    y = torch.arange(1000) % 10
    x = torch.sigmoid(3.0 * torch.randn(10, 64, generator=gen)[y] + torch.randn(1000, 64, generator=gen))
    monkeypatch.setattr(classifier, "load_mnist", lambda: (x, y))
    out = tmp_path / "out"
    assert main(["mnist-lr", "--quick", "--methods", "grad-dot", "--metrics", "lds", "--explain", "2",
                 "--cache", str(tmp_path / "cache"), "--out", str(out), "--no-plots"]) == 0
    printed = capsys.readouterr().out
    html, png = out / "mnist-lr-quick-explain.html", out / "mnist-lr-quick-explain.png"
    assert f"explanation: {html}" in printed and f"explanation: {png}" in printed
    page = _self_contained(html.read_text(encoding="utf-8"))
    assert {a.get("id") for tag, a in page.tags if tag == "section"} == {"test-0", "test-1"}
    assert all(a["src"].startswith("data:image/png;base64,") for tag, a in page.tags if tag == "img")
    assert _png_size(png.read_bytes())[0] > 400
    assert main(["mnist-lr", "--quick", "--explain", "0"]) == 2
    assert "--explain" in capsys.readouterr().err


def test_bench_settings_show_text_windows_and_table_rows(tmp_path: Path) -> None:
    from attrkit_bench.data.corpus import characters
    from attrkit_bench.runner.choices import parse_methods
    from attrkit_bench.runner.explain import explain_targets
    from attrkit_bench.settings import adult
    from attrkit_bench.settings.sequence import SequenceConfig, SequenceSetting
    from attrkit_bench.training.adamw import AdamWRecipe

    grad_dot = parse_methods(["grad-dot"], attrkit.default_registry())[0]
    gen = torch.Generator().manual_seed(0)
    texts = ["".join("abcde"[i] for i in torch.randint(0, 5, (120,), generator=gen).tolist()) for _ in range(6)]
    corpus = characters(texts, names=[f"doc{i}" for i in range(6)])
    config = SequenceConfig(n_train=24, n_targets=3, n_models=4, held_out_fraction=0.34, block=8, layers=1, heads=2,
                            width=8, recipe=AdamWRecipe(epochs=1, batch_size=12))
    sequence = SequenceSetting(name="tiny-seq", load=lambda _: corpus, full=config, quick=config, description="tiny",
                               size="tiny", default_methods=("grad-dot",), source="synthetic")
    problem = sequence.prepare(tmp_path / "seq")
    explanation = explain_targets(problem, grad_dot, 2)
    assert explanation.kind == "text" and len(explanation.targets) == 2
    windows = problem.train.dataset.tensors
    for e in explanation.targets[0].proponents:  # a window's 9 characters: its 8 inputs and the last label
        assert e.text == corpus.decode(torch.cat([windows[0][e.index], windows[1][e.index][-1:]])) and len(e.text) == 9
    assert all(e.text in explanation.to_html() for e in explanation.targets[1].opponents)

    gen = torch.Generator().manual_seed(1)
    y = torch.arange(1000) % 2
    x = torch.randn(1000, 6, generator=gen) + y[:, None]
    table = explain_targets(adult.LR.prepare(tmp_path / "adult", adult.QUICK, data=(x, y)), grad_dot, 1)
    assert table.kind == "table" and table.class_names is None  # names only for the real data
    assert "differs in: x[" in table.to_text()
