"""The lean autograd functions give the values and gradients of the code they replace."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lorabook.speed import fused


def _grads(fn, *xs):
    xs = [x.detach().clone().requires_grad_(x.is_floating_point()) for x in xs]
    out = fn(*xs)
    torch.manual_seed(123)       # the same output gradient for both paths
    g = torch.randn_like(out) if out.dim() else torch.tensor(1.7, dtype=out.dtype)
    out.backward(g)
    return out.detach(), [x.grad for x in xs if x.requires_grad]


def test_linear_cross_entropy_matches_linear_then_cross_entropy():
    torch.manual_seed(0)
    h = torch.randn(37, 16, dtype=torch.float64)
    w = torch.randn(50, 16, dtype=torch.float64)   # frozen
    t = torch.randint(0, 50, (37,))
    ref, (gref,) = _grads(lambda x: F.cross_entropy(x @ w.T, t, reduction="sum"), h)
    # chunk 8 splits the rows unevenly: every chunk must count once.
    out, (gout,) = _grads(lambda x: fused.linear_cross_entropy(x, w, t, chunk=8), h)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(gout, gref)


def test_linear_cross_entropy_follows_autocast_like_the_unfused_path():
    torch.manual_seed(0)
    h = torch.randn(20, 32)
    w = torch.randn(64, 32)
    t = torch.randint(0, 64, (20,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref, (gref,) = _grads(
            lambda x: F.cross_entropy(F.linear(x, w).float(), t, reduction="sum"), h)
        out, (gout,) = _grads(lambda x: fused.linear_cross_entropy(x, w, t), h)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(gout, gref, rtol=2e-2, atol=2e-2)   # bf16 rounding
    assert gout.dtype == torch.float32


def test_linear_cross_entropy_rejects_a_trainable_weight():
    with pytest.raises(ValueError, match="frozen"):
        fused.linear_cross_entropy(torch.randn(2, 4), torch.randn(5, 4, requires_grad=True),
                                   torch.tensor([0, 1]))


def test_linear_cross_entropy_without_grad_computes_no_gradient():
    """Under no_grad (evaluation) the head's gradient [n, d] is neither
    computed nor kept, even for a hidden state that requires grad; the
    loss is the same."""
    from torch.profiler import profile
    w, t = torch.randn(10, 8), torch.tensor([1, 2, 3, 4, 5])

    def run(requires_grad, grad_enabled):
        h = torch.randn(5, 8, generator=torch.Generator().manual_seed(0))
        h.requires_grad_(requires_grad)
        with torch.set_grad_enabled(grad_enabled), profile() as p:
            out = fused.linear_cross_entropy(h, w, t, chunk=2)
        mm = sum(e.name == "aten::matmul" for e in p.events())
        return out.detach(), mm, out.grad_fn
    ref = torch.nn.functional.cross_entropy(
        torch.randn(5, 8, generator=torch.Generator().manual_seed(0)) @ w.t(),
        t, reduction="sum")
    eval_loss, eval_mm, eval_fn = run(True, False)
    plain_loss, plain_mm, _ = run(False, True)
    train_loss, train_mm, train_fn = run(True, True)
    assert eval_fn is None and train_fn is not None
    assert eval_mm == plain_mm < train_mm        # no gradient product
    for loss in (eval_loss, plain_loss, train_loss):
        torch.testing.assert_close(loss, ref)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_rms_norm_matches_llama_rms_norm(dtype):
    from transformers.models.llama.modeling_llama import LlamaRMSNorm
    torch.manual_seed(0)
    ref_mod = LlamaRMSNorm(24, eps=1e-5).to(dtype)
    ref_mod.weight.data = torch.randn(24, dtype=dtype)
    x = torch.randn(3, 5, 24, dtype=dtype)
    ref, (gx_ref,) = _grads(ref_mod, x)
    gw_ref = ref_mod.weight.grad.clone()
    ref_mod.weight.grad = None
    fused.apply(ref_mod)
    out, (gx,) = _grads(ref_mod, x)
    tol = dict(rtol=1e-5, atol=1e-6)     # LlamaRMSNorm computes in fp32 either way
    torch.testing.assert_close(out, ref, **tol)
    torch.testing.assert_close(gx, gx_ref, **tol)
    torch.testing.assert_close(ref_mod.weight.grad, gw_ref, **tol)


def test_silu_mul_matches_autograd():
    torch.manual_seed(0)
    g, u = torch.randn(6, 40, dtype=torch.float64), torch.randn(6, 40, dtype=torch.float64)
    ref, gref = _grads(lambda a, b: F.silu(a) * b, g, u)
    out, gout = _grads(fused.silu_mul, g, u)
    torch.testing.assert_close(out, ref)
    for a, b in zip(gout, gref):
        torch.testing.assert_close(a, b)


def test_mask_dropout_is_dropout_with_a_bool_mask():
    torch.manual_seed(0)
    d = fused.MaskDropout(0.25)
    x = torch.randn(200, 300, requires_grad=True)
    y = d(x)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.75) < 0.01
    torch.testing.assert_close(y[kept], (x * 4 / 3)[kept])
    saved = y.grad_fn.saved_tensors
    assert [t.dtype for t in saved] == [torch.bool]
    y.sum().backward()
    torch.testing.assert_close(x.grad, kept.float() * 4 / 3)
    d.eval()
    assert d(x) is x
    with pytest.raises(ValueError):
        fused.MaskDropout(1.0)


def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      tie_word_embeddings=True)
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).double()


def _tiny_lora(base):
    """Frozen `base` with seeded, non-zero LoRA adapters on q and v, no dropout
    (so two runs draw no random masks and can be compared exactly)."""
    from peft import LoraConfig, get_peft_model
    base.requires_grad_(False)
    torch.manual_seed(1)
    return get_peft_model(base, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                                           target_modules=["q_proj", "v_proj"],
                                           init_lora_weights=False))


def test_apply_keeps_a_lora_models_loss_and_gradients():
    """A whole Llama + LoRA step (fp64, dropout off so the masks agree):
    the patched model gives the same loss and LoRA gradients."""
    from lorabook.speed.label_only import label_only_loss

    def run(lean):
        model = _tiny_lora(_tiny_llama())
        if lean:
            counts = fused.apply(model)
            assert counts["rms_norm"] == 5 and counts["mlp"] == 2
            assert counts["attention"] == 1
            model.lorabook_fused = True
        ids = torch.randint(0, 97, (3, 11), generator=torch.Generator().manual_seed(2))
        labels = ids.clone()
        labels[:, :4] = -100
        labels[2, 8:] = -100
        mask = torch.ones_like(ids)
        mask[2, 8:] = 0
        loss = label_only_loss(model, dict(input_ids=ids, attention_mask=mask, labels=labels))
        loss.backward()
        return loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}

    loss0, g0 = run(False)
    loss1, g1 = run(True)
    torch.testing.assert_close(loss1, loss0)
    assert g0.keys() == g1.keys() and g0
    for k in g0:
        torch.testing.assert_close(g1[k], g0[k])


@pytest.mark.parametrize("dtype,bf16", [(torch.float64, False), (torch.float32, False),
                                        (torch.float32, True)])
def test_dropout_linear_is_mask_dropout_then_linear(dtype, bf16):
    """Same seed, same masks: the same output and gradients as MaskDropout
    followed by the linear layer (bit for bit without autocast), keeping the
    input itself and a bool mask instead of the dropped-out copy."""
    torch.manual_seed(0)
    lin = nn.Linear(16, 4, bias=False).to(dtype)
    x = torch.randn(3, 5, 16, dtype=dtype, requires_grad=True)
    gy = torch.randn(3, 5, 4, dtype=dtype)
    dl = fused.DropoutLinear(lin, 0.3)
    assert dl.weight is lin.weight and "dropout=0.3" in repr(dl)

    def run(module):
        torch.manual_seed(1)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            y = module(x)
        return y, torch.autograd.grad(y, (x, lin.weight), gy.to(y.dtype))

    y0, g0 = run(nn.Sequential(fused.MaskDropout(0.3), lin))
    y1, g1 = run(dl)
    assert y1.dtype == y0.dtype
    if bf16:
        torch.testing.assert_close(y1, y0)
        for a, b in zip(g1, g0):
            torch.testing.assert_close(a, b)
    else:
        assert torch.equal(y1, y0)
        assert all(torch.equal(a, b) for a, b in zip(g1, g0))
    torch.manual_seed(1)
    saved = dl(x).grad_fn.saved_tensors
    assert saved[0].data_ptr() == x.data_ptr() and saved[1].dtype == torch.bool
    dl.eval()
    torch.testing.assert_close(dl(x), lin(x))
    with pytest.raises(ValueError):
        fused.DropoutLinear(lin, 1.0)
    with pytest.raises(ValueError):
        fused.DropoutLinear(nn.Linear(2, 2), 0.1)


def test_lora_adapters_share_their_saved_input():
    """With dropout, q's and v's adapters keep the layer's normalised input
    once instead of one dropped-out copy each; the step is unchanged."""
    from benchmarks.harness import saved_tensor_mb
    from peft import LoraConfig, get_peft_model
    base = _tiny_llama()
    base.requires_grad_(False)
    model = get_peft_model(base, LoraConfig(r=4, lora_dropout=0.2, init_lora_weights=False,
                                            target_modules=["q_proj", "v_proj"]))
    fused.apply(model)
    lora = [m for m in model.modules() if isinstance(getattr(m, "lora_A", None), nn.ModuleDict)]
    assert len(lora) == 4
    ids = torch.randint(0, 97, (3, 11), generator=torch.Generator().manual_seed(2))

    def step():
        model.zero_grad(set_to_none=True)
        torch.manual_seed(3)
        loss = model(input_ids=ids, labels=ids).loss
        torch.manual_seed(3)
        mb = saved_tensor_mb(model, lambda: model(input_ids=ids, labels=ids).loss)
        loss.backward()
        return loss.detach(), [p.grad for p in model.parameters() if p.requires_grad], mb

    loss1, g1, mb1 = step()
    for m in lora:       # back to dropout + plain lora_A, as peft builds them
        a = m.lora_A["default"]
        plain = nn.Linear(a.in_features, a.out_features, bias=False)
        plain.weight = a.weight
        m.lora_A["default"], m.lora_dropout["default"] = plain, fused.MaskDropout(a.p)
    loss0, g0, mb0 = step()
    assert torch.equal(loss1, loss0)
    assert all(torch.equal(a, b) for a, b in zip(g1, g0))
    # One fp64 copy of a (3, 11, 32) input less per layer. The first layer's
    # input needs no gradient, so its dropouts kept no mask before; now its
    # two bool masks are kept (one byte per element each).
    n = 3 * 11 * 32
    assert mb0 - mb1 == pytest.approx((2 * n * 8 - 2 * n) / 2**20)


def test_apply_swaps_lora_dropout_and_leaves_other_modules_alone():
    from peft import LoraConfig, get_peft_model
    model = get_peft_model(_tiny_llama(), LoraConfig(r=2, lora_dropout=0.1,
                                                     target_modules=["q_proj"]))
    keys = set(model.state_dict())
    counts = fused.apply(model)
    assert counts["lora_dropout"] == 2
    assert set(model.state_dict()) == keys
    fusedA = [m for m in model.modules() if isinstance(m, fused.DropoutLinear)]
    assert len(fusedA) == 2 and all(d.p == 0.1 for d in fusedA)
    assert not any(type(m) is nn.Dropout for m in model.modules())
    other = nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3))
    assert fused.apply(other) == {"rms_norm": 0, "mlp": 0, "lora_dropout": 0,
                                  "attention": 0}


def test_keep_mask_has_the_asked_probability():
    torch.manual_seed(0)
    m = fused.keep_mask((301, 1001), 0.3)
    assert m.shape == (301, 1001) and m.dtype == torch.bool
    assert abs(m.float().mean().item() - 0.7) < 0.005
    assert fused.keep_mask((5,), 0.0).all()


def _graph_names(fn):
    seen, todo, names = set(), [fn], set()
    while todo:
        f = todo.pop()
        if f is None or f in seen:
            continue
        seen.add(f)
        names.add(type(f).__name__)
        todo += [g for g, _ in f.next_functions]
    return names


def test_attention_bf16_forward_fp32_backward():
    """Under bf16 autocast the patched attention is used, and its gradients
    are at least as close to the fp32 gradients as plain bf16 SDPA's."""
    def grads(lean, bf16):
        model = _tiny_lora(_tiny_llama().float())
        if lean:
            fused.apply(model)
        ids = torch.randint(0, 97, (2, 24), generator=torch.Generator().manual_seed(2))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=ids, labels=ids).loss
        names = _graph_names(loss.grad_fn)
        loss.backward()
        g = torch.cat([p.grad.flatten() for n, p in model.named_parameters() if p.requires_grad])
        return g, names

    exact, _ = grads(False, False)
    plain, names_plain = grads(False, True)
    lean, names_lean = grads(True, True)
    lean_fp32, names_lean_fp32 = grads(True, False)
    assert "_AttentionFp32BackwardBackward" in names_lean
    assert "_AttentionFp32BackwardBackward" not in names_plain
    # Without autocast (fp32 training, a CPU without native bf16) the
    # patched attention is plain SDPA.
    assert "_AttentionFp32BackwardBackward" not in names_lean_fp32
    torch.testing.assert_close(lean_fp32, exact, rtol=1e-4, atol=1e-6)

    def err(g):
        return ((g - exact).norm() / exact.norm()).item()
    assert err(lean) < 0.05
    assert err(lean) <= err(plain) * 1.5


def test_attention_without_grad_is_plain_sdpa():
    base, lean = _tiny_llama(), _tiny_llama()
    fused.apply(lean)
    ids = torch.randint(0, 97, (2, 9), generator=torch.Generator().manual_seed(3))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        a = base(input_ids=ids).logits
        b = lean(input_ids=ids).logits
    torch.testing.assert_close(a, b, rtol=0, atol=0)
