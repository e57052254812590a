"""Trainer pieces: data, collator, model loading, reference cache, training loop."""
