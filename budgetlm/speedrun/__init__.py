"""The main job (data, tokenizer, budgeted training, samples) and how big a model it trains."""
