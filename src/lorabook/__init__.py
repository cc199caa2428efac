"""lorabook: 8-bit LoRA fine-tuning of a small language model, as a book."""
__version__ = "0.1.0"
