"""Models numprune implements itself (LlamaGen c2i GPT and its VQ-16 tokenizer), in the official key layout."""
