"""Decoding and scoring: CTC greedy, LLM generate, WER and error statistics."""
