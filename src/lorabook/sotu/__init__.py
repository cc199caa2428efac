"""What lorabook knows about its own corpus, the State of the Union
addresses 1790-2021: the cleaning rules and passage cutter that built
`data/sotu_passages.jsonl` (`cleaning`), the prompt form and the new
prompts of chapter 5 (`prompts`), and the era judge (`era`). The stages use
them where the data has the corpus's form and stay generic otherwise.
"""
