"""The LM head and its softmax only at positions that carry a label.

The LM head (576 x 49,152 for SmolLM2) and its softmax are a fifth of the
model's FLOPs, and prompt and padding positions carry no label, so their
logits are wasted work. `label_only_loss` (training) and
`evaluate.response_nll` (scoring) feed the head only the hidden states
whose next token is learned; the result equals the model's own loss (a
test checks it).
"""
from __future__ import annotations

import torch


def _right_padded(attention_mask) -> bool:
    """Every row is ones then zeros (or all ones)."""
    m = attention_mask.to(torch.int8)
    return bool((m[:, 1:] <= m[:, :-1]).all())


def backbone_and_head(model):
    """(decoder stack, LM head) of a causal LM, PEFT-wrapped or not, or None
    when the model does not expose them the usual transformers way."""
    from peft import PeftModel
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    get_head = getattr(base, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    backbone = getattr(base, "base_model", None)
    if head is None or backbone is None or backbone is base:
        return None
    return backbone, head


def labelled_hidden(backbone, inputs: dict):
    """The decoder's last hidden states at the positions whose next token
    carries a label: (hidden [n, d], target ids [n], batch row of each [n]).

    What `label_only_loss` (training) and `evaluate.response_nll` (scoring)
    feed to the LM head; the head and its softmax never see prompt or
    padding positions.
    """
    mask = inputs.get("attention_mask")
    if mask is not None and _right_padded(mask):
        # With padding only on the right, a real token's causal window holds
        # real tokens only, so the padding mask changes no real position;
        # dropping it lets attention take the causal-only fast path. Padded
        # positions then see real tokens, but they carry no label and no
        # real position sees them. (Position ids count from 0 either way.)
        mask = None
    hidden = backbone(input_ids=inputs["input_ids"],
                      attention_mask=mask).last_hidden_state
    target = inputs["labels"][:, 1:]
    keep = target != -100
    return hidden[:, :-1][keep], target[keep], keep.nonzero()[:, 0]


def label_only_loss(model, inputs: dict, num_items_in_batch=None):
    """Causal-LM loss with the LM head applied only where a label is.

    Returns None when the model is not a plain PEFT causal LM (e.g.
    wrapped for DDP); the caller then uses the model's own loss.
    """
    from peft import PeftModel
    if not isinstance(model, PeftModel):
        return None
    parts = backbone_and_head(model)
    if parts is None:
        return None
    backbone, head = parts
    h, target, _ = labelled_hidden(backbone, inputs)
    if getattr(model, "lorabook_fused", False) and not head.weight.requires_grad \
            and getattr(head, "bias", None) is None:
        from lorabook.speed.fused import linear_cross_entropy
        loss = linear_cross_entropy(h, head.weight, target)
    else:
        logits = head(h)       # CE in fp32 (fp64 stays fp64)
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        loss = torch.nn.functional.cross_entropy(logits, target, reduction="sum")
    n = num_items_in_batch if num_items_in_batch is not None else len(target)
    if torch.is_tensor(n):
        n = n.to(loss.device)
    return loss / n


