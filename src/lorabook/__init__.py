"""lorabook: 8-bit LoRA fine-tuning of a small language model, as a book.

The stages of the report, in order; each imports only from those above it:

    config       one frozen Config: presets, YAML, validation
    corpus       what a stage may know about its corpus: generic defaults
    card         the dataset card (Hugging Face's README.md) beside the data
    data         load a dataset, clean it, split it by group, describe it
    preprocess   prompt format, tokens and labels, the collator
    model        tokenizer, bitsandbytes' 8-bit base, LoRA (PEFT)
    train        TrainingArguments, the Trainer, the run directory
    metrics      text metrics over strings (ROUGE, BLEU, overlap, ...)
    generation   how the models are asked and how they decode
    memorization did the base model see the texts? (a contamination check)
    evaluate     perplexity, generations and their metrics (chapter 5)
    plots        the book's figures
    report       what the chapters print: tables, timings, the author
    cli          `lorabook data|train|evaluate|export|...`

Beside them, in subpackages:

    speed        the CPU speed layer (int8 products from bitsandbytes'
                 codes, lean autograd, LM head at labelled positions only,
                 tcmalloc); below every stage but config, and switched off
                 by one config field, `speed_layer`
    sotu         what lorabook knows about its own corpus: the cleaning
                 rules and passage cutter, the prompt form, the era judge,
                 and its `Corpus` (sotu.corpus)
    book         what only the book needs: the pitfall demonstrations, the
                 rule-written assessment, a bare loop for side-by-side runs,
                 the Sphinx extension, the submission files, the project
                 `lorabook new` writes for one's own data (scaffold)

`LAYERS` states the order; `tests/test_layout.py` reads every import of
every module and checks it.
"""
__version__ = "0.1.0"

# Lowest first. A module may import modules of its own layer or of layers
# above it in this list, never of a later one.
LAYERS = (
    ("config",),
    ("speed", "speed.alloc", "speed.int8cpu", "speed.fused", "speed.label_only"),
    ("corpus", "card"),
    ("sotu", "sotu.cleaning", "sotu.prompts", "sotu.control", "sotu.corpus"),
    ("data",),
    ("preprocess",),
    ("model",),
    ("train",),
    ("metrics",),
    ("sotu.era",),
    ("generation",),
    ("memorization",),
    ("evaluate",),
    ("plots",),
    ("report",),
    ("book", "book.loop", "book.quantization", "book.pitfalls", "book.leakage",
     "book.assessment", "book.verdicts", "book.reading", "book.submission", "book.sphinx_ext",
     "book.toc", "book.scaffold"),
    ("cli", "__main__"),
)
