"""Models: Zipformer encoder, CTC, LLM-ASR (+MoSE), Hugging Face adapters."""
