"""The dataset card: what chapter 1 says about the data, from its author.

A dataset card is Hugging Face's `README.md` for a dataset: a YAML header
(`pretty_name`, `license`, `language`, `size_categories`, ...) and the
usual sections (description, sources, uses, bias, risks and limitations,
citation). lorabook reads the card that lies beside the data file (or
inside a saved dataset's directory) with `huggingface_hub.DatasetCard`, and
checks the card's size category against the number of samples loaded.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from lorabook.config import LorabookError

# The placeholder of Hugging Face's card template; a card that still holds
# it is a starter card, and the build warns about it.
PLACEHOLDER = "[More Information Needed]"

# Hugging Face's size categories, as (upper bound, name).
SIZE_CATEGORIES = ((1_000, "n<1K"), (10_000, "1K<n<10K"),
                   (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                   (10_000_000, "1M<n<10M"))


def size_category(n: int) -> str:
    """Hugging Face's size category of a dataset of `n` samples."""
    return next((name for bound, name in SIZE_CATEGORIES if n < bound), "n>10M")


def card_path(data_path: Path) -> Path:
    """Where the card of a data file lies: `README.md` beside it, or in it
    when the data are a directory (a saved dataset)."""
    p = Path(data_path)
    return (p if p.is_dir() else p.parent) / "README.md"


# One BibTeX entry (group 1) and its key (group 2), up to the "}" that
# opens a line; the blank lines after it go with it.
BIB_ENTRY = re.compile(r"^(@\w+\{([^,\s]+),.*?^\})\n*", re.S | re.M)


def bib_entries(text: str) -> list[tuple[str, str]]:
    """(key, entry) of every BibTeX entry in `text`, in order."""
    return [(m[2], m[1]) for m in BIB_ENTRY.finditer(text)]


@dataclass
class Card:
    path: Path
    meta: dict                       # the YAML header
    sections: dict = field(default_factory=dict)   # "## " heading -> text

    def fact(self, key: str) -> str:
        """A header field as text: lists joined by commas, "" if absent."""
        v = self.meta.get(key)
        if isinstance(v, (list, tuple)):
            return ", ".join(str(x) for x in v)
        return "" if v is None else str(v)

    @property
    def name(self) -> str:
        return self.fact("pretty_name") or self.path.parent.name

    def section(self, title: str) -> str:
        """A section's text by its heading (case-insensitive), "" if none."""
        for k, v in self.sections.items():
            if k.lower() == title.lower():
                return v
        return ""

    def bibtex(self) -> str:
        """The BibTeX entries of the card's Citation section ("" if none)."""
        return "\n\n".join(e for _, e in bib_entries(self.section("Citation")))

    def citation_keys(self) -> list[str]:
        """The keys of those entries, in the card's order."""
        return [k for k, _ in bib_entries(self.section("Citation"))]

    def cite_sentence(self) -> str:
        """Chapter 1's sentence on how the data are cited (MyST)."""
        keys = self.citation_keys()
        if not keys:
            return "Its card gives no citation."
        cites = [f"{{cite:t}}`{k}`" for k in keys]
        return ("I cite the data as " + (" and ".join(cites) if len(cites) < 3
                else ", ".join(cites[:-1]) + " and " + cites[-1]) + ".")

    def placeholders(self) -> list[str]:
        """The header fields and sections that still hold the template's
        placeholder (or are empty)."""
        out = [k for k in ("pretty_name", "license", "language")
               if not self.fact(k) or PLACEHOLDER in self.fact(k)]
        out += [k for k, v in self.sections.items()
                if not v.strip() or PLACEHOLDER in v]
        return out

    def facts(self, n_samples: int) -> list[dict]:
        """Rows (fact, value) for chapter 1's table: the card's header, and
        the samples loaded checked against the card's size category."""
        said = self.fact("size_categories")
        computed = size_category(n_samples)
        rows = [dict(fact="name", value=self.name)] + [
                dict(fact=label, value=self.fact(key) or "not stated")
                for label, key in (("licence", "license"),
                                   ("language", "language"),
                                   ("task", "task_categories"),
                                   ("source", "source_datasets"),
                                   ("size category", "size_categories"))]
        rows.append(dict(
            fact="samples loaded",
            value=f"{n_samples:,}, size category {computed}: "
                  + ("as the card says" if said == computed
                     else f"the card says {said or 'nothing'}")))
        return rows


def load_card(path: Path) -> Card:
    """Read a dataset card with `huggingface_hub.DatasetCard`; a missing or
    malformed card is an `error:` that says what to write."""
    from huggingface_hub import DatasetCard
    path = Path(path)
    if not path.is_file():
        raise LorabookError(
            f"no dataset card at {path}: write one (a README.md with a YAML "
            f"header: pretty_name, license, language, size_categories; and "
            f"the sections Dataset Description, Uses, Bias, Risks, and "
            f"Limitations, Citation), or let `lorabook new` write a starter "
            f"card")
    try:
        card = DatasetCard.load(path)
    except Exception as e:             # YAML errors, a header that is no mapping
        raise LorabookError(f"{path}: not a valid dataset card ({e})") from None
    meta = card.data.to_dict()
    sections: dict[str, str] = {}
    title = None
    for line in card.text.splitlines():
        m = re.match(r"^##\s+(.+?)\s*$", line)
        if m:
            title = m[1]
            sections[title] = ""
        elif title is not None:
            sections[title] += line + "\n"
    return Card(path=path, meta=meta,
                sections={k: v.strip() for k, v in sections.items()})


STARTER = """---
pretty_name: {name}
license: "{placeholder}"
language:
- en
size_categories:
- {size}
task_categories:
- text-generation
---
# Dataset card: {name}

## Dataset Description

{placeholder}

## Dataset Sources

{placeholder}

## Uses

{placeholder}

## Bias, Risks, and Limitations

{placeholder}

## Citation

{placeholder}
"""


def write_starter_card(path: Path, name: str, n_samples: int) -> Path:
    """A card with Hugging Face's placeholder in every field a person must
    fill; never overwrites a card that exists."""
    path = Path(path)
    if path.exists():
        raise LorabookError(f"{path} exists; not overwriting a dataset card")
    path.write_text(STARTER.format(name=json.dumps(name), placeholder=PLACEHOLDER,
                                   size=size_category(n_samples)),
                    encoding="utf-8")
    return path
