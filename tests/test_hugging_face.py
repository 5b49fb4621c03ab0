"""Stock Hugging Face and peft models, unpatched: every gradient source runs on padded dict batches,
and its gradients equal a per-example autograd loop (the brute force) to float32 round-off."""

import warnings

import pytest
import torch

import attrkit

transformers = pytest.importorskip("transformers")

LABELS = 3


def _bert():
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=24, max_position_embeddings=16, num_labels=LABELS)
    return transformers.BertForSequenceClassification(config).eval()


def _gpt2():
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=40, n_embd=16, n_layer=2, n_head=2, n_positions=16,
                                     num_labels=LABELS, pad_token_id=0)
    return transformers.GPT2ForSequenceClassification(config).eval()


def _batches(n=8, length=7, size=4, seed=0):
    """Padded dict batches: every other sentence is 3 tokens shorter (its mask and ids are 0 there)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 40, (n, length), generator=gen)
    mask = torch.ones(n, length, dtype=torch.long)
    mask[::2, -3:] = 0
    ids[mask == 0] = 0
    labels = torch.randint(0, LABELS, (n,), generator=gen)
    return [{"input_ids": ids[i : i + size], "attention_mask": mask[i : i + size], "labels": labels[i : i + size]}
            for i in range(0, n, size)]


def _brute(model, batches, names):
    """``Tensor[n, p]``: each sentence's gradient alone, by plain autograd (no attrkit)."""
    params = dict(model.named_parameters())
    rows = []
    for batch in batches:
        for i in range(len(batch["labels"])):
            one = {k: v[i : i + 1] for k, v in batch.items()}
            loss = attrkit.cross_entropy(model, one)[0]
            grads = torch.autograd.grad(loss, [params[n] for n in names], allow_unused=True)
            rows.append(torch.cat([(torch.zeros_like(params[n]) if g is None else g).reshape(-1)
                                   for n, g in zip(names, grads)]))
    return torch.stack(rows)


@pytest.mark.parametrize("build", [_bert, _gpt2], ids=["bert", "gpt2"])
@pytest.mark.parametrize("gradients", ["per-example", "factored", "last-layer"])
def test_grad_dot_equals_the_per_example_autograd_loop(build, gradients):
    model = build()
    task = attrkit.AttributionTask(model=model, loss_fn=attrkit.cross_entropy)
    train, test = _batches(), _batches(n=4, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", attrkit.AttrkitWarning)  # vmap falls back; embeddings are not factored
        attributor = attrkit.compose({"method": "grad-dot", "gradients": gradients}, task).fit(train)
        scores = attributor.attribute(test)
    names = attributor.gradients.names(task)
    expected = _brute(model, test, names) @ _brute(model, train, names).T
    torch.testing.assert_close(scores, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("gradients", ["per-example", "factored"])
def test_the_last_layer_and_head_take_one_hooked_pass_without_vmap(monkeypatch, gradients):
    import attrkit.functional.factored as module

    monkeypatch.setattr(module, "vmap_factors", lambda *a, **k: pytest.fail("one example at a time"))
    model = _bert()
    task = attrkit.AttributionTask(model=model, loss_fn=attrkit.cross_entropy)
    spec = {"method": "grad-dot", "gradients": {"name": gradients, "params": ["bert.encoder.layer.1.*", "classifier.*"]}}
    train, test = _batches(), _batches(n=4, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", attrkit.AttrkitWarning)
        warnings.simplefilter("error", attrkit.UntraceableWarning)  # Linear and LayerNorm only: no vmap, no loop
        attributor = attrkit.compose(spec, task).fit(train)
        scores = attributor.attribute(test)
    names = attributor.gradients.names(task)
    assert any("LayerNorm" in n for n in names)
    expected = _brute(model, test, names) @ _brute(model, train, names).T
    torch.testing.assert_close(scores, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("spec", [
    {"method": "trak", "projector": {"name": "gaussian", "dim": 16}},
    {"method": "if", "gradients": "factored", "solver": {"name": "ekfac", "regularization": 0.1}},
    {"method": "if", "solver": {"name": "cg", "max_iter": 5, "regularization": 0.1}},
], ids=["trak", "if-ekfac", "if-cg"])
def test_methods_run_on_a_stock_bert(spec):
    task = attrkit.AttributionTask(model=_bert(), loss_fn=attrkit.cross_entropy)
    scores = attrkit.compose(spec, task).fit(_batches()).attribute(_batches(n=4, seed=1))
    assert scores.shape == (4, 8) and torch.isfinite(scores).all()


def test_peft_lora_adapters_are_attributed_alone():
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(_bert(), peft.LoraConfig(r=2, target_modules=["query", "value"], lora_dropout=0.0))
    model.eval()
    task = attrkit.AttributionTask(model=model, loss_fn=attrkit.cross_entropy)
    attributor = attrkit.compose({"method": "grad-dot"}, task).fit(_batches())
    names = attributor.gradients.names(task)
    assert names and all("lora_" in n or "classifier" in n for n in names)  # the trainable ones only
    expected = _brute(model, _batches(n=4, seed=1), names) @ _brute(model, _batches(), names).T
    torch.testing.assert_close(attributor.attribute(_batches(n=4, seed=1)), expected, rtol=1e-4, atol=1e-5)


def test_the_fallback_from_vmap_is_said_once(monkeypatch):
    from attrkit.functional import gradients

    monkeypatch.setattr(gradients, "_WARNED", set())
    task = attrkit.AttributionTask(model=_bert(), loss_fn=attrkit.cross_entropy)
    with pytest.warns(attrkit.UntraceableWarning, match="one example at a time") as record:
        attrkit.compose({"method": "grad-dot"}, task).fit(_batches()).attribute(_batches(n=4, seed=1))
    assert sum(isinstance(w.message, attrkit.UntraceableWarning) for w in record) == 1
