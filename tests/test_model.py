import math

import pytest
import torch

from lorabook import model as M
from lorabook import preprocess as P
from lorabook.config import LorabookError


def test_bundled_conversion_is_cached():
    a = M.convert_bundled_model()
    assert (a / "model.safetensors").is_file() and (a / "tokenizer.json").is_file()
    assert M.convert_bundled_model() == a          # second call: the cache


@pytest.mark.parametrize("family,expected", [
    ("llama", ["q_proj", "v_proj"]), ("gpt2", ["c_attn"]),
    ("gpt_neox", ["query_key_value"]), ("opt", ["q_proj", "v_proj"])])
def test_target_modules_per_architecture(family, expected):
    from transformers import AutoConfig, AutoModelForCausalLM
    kw = dict(vocab_size=100)
    if family == "gpt2":
        kw.update(n_embd=16, n_layer=1, n_head=2)
    else:
        kw.update(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                  intermediate_size=32)
        if family == "opt":
            kw.update(ffn_dim=32, word_embed_proj_dim=16)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(family, **kw))
    assert M.default_target_modules(model) == expected


def test_unknown_architecture_needs_explicit_targets():
    class Odd(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.mixer = torch.nn.Linear(2, 2)
    with pytest.raises(LorabookError, match="target_modules"):
        M.default_target_modules(Odd())


def test_8bit_lora_model_trains_only_adapters(tiny_cfg, tokenizer):
    import bitsandbytes as bnb
    model = M.load_model(tiny_cfg.replace(quant_backend="bitsandbytes"))
    quantized = [m for m in model.modules() if isinstance(m, bnb.nn.Linear8bitLt)]
    assert quantized, "base linear layers should be 8-bit"
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    ex = P.encode("1790, George Washington (No party):\nHello.", "World.",
                  tokenizer, 64)
    batch = P.collator(tokenizer)([ex, ex])
    out = model(**batch)
    assert math.isfinite(out.loss.item())
    assert out.logits.shape == (2, len(ex["input_ids"]), len(tokenizer))


def test_missing_model_gives_clear_error(tiny_cfg, tmp_path):
    cfg = tiny_cfg.replace(model_name=str(tmp_path / "no-such-model"))
    with pytest.raises(LorabookError, match="cannot load model"):
        M.load_base_model(cfg)


@pytest.mark.parametrize("backend", ["bitsandbytes", "int8cpu"])
def test_label_only_head_loss_equals_model_loss(tiny_cfg, tokenizer, backend):
    from lorabook.speed.label_only import label_only_loss
    cfg = tiny_cfg.replace(quant_backend=backend)
    model = M.load_model(cfg)
    exs = [P.encode("1790, George Washington (No party):\nHello.", r, tokenizer, 64)
           for r in ("World.", "A longer response to pad the other one.")]
    batch = P.collator(tokenizer)(exs)
    full = model(**batch).loss
    fast = label_only_loss(model, batch)
    torch.testing.assert_close(fast, full, rtol=1e-5, atol=1e-5)
    fast.backward()                  # gradients reach the LoRA weights
    grads = [p.grad for n, p in model.named_parameters() if "lora_B" in n]
    assert grads and all(g is not None for g in grads)


def test_int8cpu_backend_is_bitsandbytes_model(tiny_cfg):
    """The fast CPU product keeps bitsandbytes' own layers, codes and scales;
    only who multiplies changes."""
    import bitsandbytes as bnb
    from lorabook.speed.int8cpu import bnb_int8_state
    fast = M.load_model(tiny_cfg.replace(quant_backend="int8cpu", speed_layer=True))
    plain = M.load_model(tiny_cfg.replace(quant_backend="bitsandbytes"))
    layers = [m for m in fast.modules() if isinstance(m, bnb.nn.Linear8bitLt)]
    ref = [m for m in plain.modules() if isinstance(m, bnb.nn.Linear8bitLt)]
    assert layers and len(layers) == len(ref)
    for a, b in zip(layers, ref):
        assert a.weight.dtype == torch.int8
        assert torch.equal(a.weight.data, b.weight.data)
        torch.testing.assert_close(bnb_int8_state(a)[1], bnb_int8_state(b)[1])
    assert fast.get_base_model().lorabook_fast_int8 == len(layers)
    trainable = [n for n, p in fast.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)


def test_invalid_backend_rejected(tiny_cfg):
    with pytest.raises(LorabookError, match="quant_backend"):
        tiny_cfg.replace(quant_backend="gguf")


def test_micro_batches_give_the_full_batch_gradient(tiny_cfg, tokenizer):
    """Gradient accumulation over micro-batches, each loss divided by the
    whole batch's learned tokens, equals one full batch (bench and Trainer
    both rely on this)."""
    from lorabook.speed.label_only import label_only_loss
    model = M.load_model(tiny_cfg.replace(lora_dropout=0.0))
    exs = [P.encode("1790, George Washington (No party):\nHello.", r, tokenizer, 64)
           for r in ("World.", "A longer response to pad the other one.",
                     "Short.", "And a fourth, medium-length response.")]
    lora = [p for n, p in model.named_parameters() if p.requires_grad]
    # A nonzero B so that the gradients of A are not all zero.
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    collate = P.collator(tokenizer)
    label_only_loss(model, collate(exs)).backward()
    full = [p.grad.clone() for p in lora]
    model.zero_grad()
    n = torch.tensor(sum(sum(1 for t in e["labels"][1:] if t != -100) for e in exs))
    for part in (exs[:2], exs[2:]):
        label_only_loss(model, collate(part), n).backward()
    for g, p in zip(full, lora):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-6)


def test_micro_batch_size_must_divide_batch_size(tiny_cfg):
    with pytest.raises(LorabookError, match="micro_batch_size"):
        tiny_cfg.replace(micro_batch_size=3)
    assert tiny_cfg.replace(micro_batch_size=4).micro_batch_size == 4


def test_right_padding_detection():
    from lorabook.speed.label_only import _right_padded
    assert _right_padded(torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0]]))
    assert not _right_padded(torch.tensor([[1, 1, 1], [0, 1, 1]]))   # left
    assert not _right_padded(torch.tensor([[1, 0, 1]]))              # a hole


@pytest.mark.parametrize("native", [True, False])
def test_use_bf16_pins_and_follows_the_cpu(tiny_cfg, monkeypatch, native):
    """The bf16 autocast decision, both CPU branches on any CPU: the config
    wins when it says; None means int8cpu on a CPU with native bf16 only."""
    from lorabook.speed import int8cpu
    monkeypatch.setattr(int8cpu, "is_fast_bf16_cpu", lambda: native)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    auto = tiny_cfg.replace(bf16=None, quant_backend="int8cpu", speed_layer=True)
    assert M.use_bf16(auto) is native
    assert M.use_bf16(auto.replace(bf16=True)) is True
    assert M.use_bf16(auto.replace(bf16=False)) is False
    # Not where bf16 does not pay: no 8-bit, or bitsandbytes' own layers.
    assert M.use_bf16(auto.replace(load_in_8bit=False)) is False
    assert M.use_bf16(auto.replace(quant_backend="bitsandbytes")) is False
