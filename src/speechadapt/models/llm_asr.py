"""LLM-based ASR: frozen speech encoder(s) -> frame-stacking projector(s) -> Qwen2 (+ LoRA).

One encoder is the LibriSpeech recipe's model; several encoders, each with its own
projector and its own speech slot in the prompt, are MoSE (mixture of speech encoders).

What this module guarantees (the public reference recipe gets the first two wrong):
  * the encoders are frozen: no gradient, always in eval mode (``train()`` cannot undo
    it, so validation inside a training epoch leaves them in eval), run under no_grad;
  * the speech special tokens have real rows, kept in a small tensor of their own
    (``speech_token_embeddings``) that is trainable when asked, so the whole vocabulary
    embedding is never copied or unfrozen;
  * the loss covers only the transcript tokens and the closing ``<|im_end|>``;
  * prompts are left-padded, so batched ``generate`` equals one-by-one decoding.
"""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from speechadapt.models.llm_asr_prompt import (
    END_SPEECH,
    IGNORE_ID,
    START_SPEECH,
    PromptBatch,
    PromptBuilder,
    assemble,
)
from speechadapt.models.frozen_store import FrozenOutputStore
from speechadapt.models.interface import DecodeOptions, SpeechModelMixin, loss_metrics
from speechadapt.models.projector import FrameStackProjector
from speechadapt.training.metrics import MetricsTracker
from speechadapt.utils.config import config_to_dict

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "gate_proj", "down_proj")
# Chat checkpoints ship sampling settings (Qwen2-Instruct: repetition_penalty 1.1 ...)
# that generate() would inherit; plain greedy/beam search for ASR switches them off.
PLAIN_SEARCH = dict(do_sample=False, repetition_penalty=1.0, no_repeat_ngram_size=0, length_penalty=1.0)


@dataclass
class LlmAsrConfig:
    stack_k: int = field(default=4, metadata={"help": "encoder frames stacked per LLM embedding"})
    projector_dropout: float = 0.1
    use_lora: bool = field(default=True, metadata={"help": "false: the LLM stays frozen"})
    lora_r: int = 64
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_targets: Tuple[str, ...] = field(default=LORA_TARGETS, metadata={"help": "module names"})
    train_special_tokens: bool = field(default=True, metadata={
        "help": "train the <start_speech>/<end_speech> embedding rows"})
    # MoSE: probability of dropping each encoder's slot per utterance in training
    # (drawn from torch's global RNG, which the training loop seeds per rank and
    # saves in checkpoints, so resume is exact).
    mose_slot_dropout: float = field(default=0.0, metadata={
        "help": "MoSE: drop each encoder's slot with this probability in training"})
    projector_norm: bool = field(default=True, metadata={
        "help": "RMS-normalise each projector's output, its gain starting at the RMS of the LLM's token "
                "embeddings (speech frames at the scale of text at initialisation)"})


@dataclass
class LlmAsrOutput:
    loss: torch.Tensor  # summed cross-entropy over label tokens
    num_tokens: int
    num_correct: torch.Tensor  # argmax hits on label tokens (teacher forcing); a tensor: no sync, vmap-safe


def apply_lora(llm: nn.Module, config: LlmAsrConfig) -> nn.Module:
    """Wrap the LLM with peft LoRA adapters; the base weights are frozen by peft."""
    from peft import LoraConfig, get_peft_model  # slow import, only when used

    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=list(config.lora_targets),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(llm, lora)


def token_embedding_rms(llm: nn.Module) -> float:
    """The mean root-mean-square of the LLM's token embedding rows."""
    weight = llm.get_input_embeddings().weight.detach().float()
    return float(weight.pow(2).mean(dim=-1).sqrt().mean())


def sample_slot_mask(batch_size: int, num_slots: int, p: float,
                     generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """(B, S) bool, True = slot kept. Each slot dropped with probability p; an
    utterance whose slots were all dropped keeps them all."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"slot dropout must be in [0, 1), got {p}")
    keep = torch.rand(batch_size, num_slots, generator=generator) >= p
    all_dropped = ~keep.any(dim=1, keepdim=True)
    return keep | all_dropped


class LlmAsrModel(SpeechModelMixin, nn.Module):
    """``sources`` records the files the model was built from (LLM directory, encoder
    checkpoints): with the config it is the model's spec."""

    input_kind = "fbank"
    decode_sorted = True  # batched generate pads to the longest utterance: decode in length order
    frozen_by_design = ("encoders.",)  # fine-tuning may not select them
    group_prefixes = {"encoder": ("encoders.",), "projector": ("projectors.", "speech_token_embeddings"),
                      "decoder": ("llm.",)}

    def __init__(self, encoders: Sequence[nn.Module], llm: nn.Module, tokenizer, config: LlmAsrConfig = LlmAsrConfig(),
                 sources: Optional[Dict[str, Any]] = None):
        super().__init__()
        if len(encoders) < 1:
            raise ValueError("LlmAsrModel needs at least one encoder")
        self.config = config
        self.sources = dict(sources or {})
        self.tokenizer = tokenizer
        self.prompt = PromptBuilder(tokenizer, num_slots=len(encoders))
        self.encoders = nn.ModuleList(encoders)
        for p in self.encoders.parameters():
            p.requires_grad_(False)
        self.encoders.eval()
        self.frozen_store: Optional[FrozenOutputStore] = None  # keep_frozen_outputs() turns it on
        output_rms = token_embedding_rms(llm) if config.projector_norm else None
        self.projectors = nn.ModuleList(_projector(enc, llm, tokenizer, config, output_rms) for enc in encoders)
        self._init_speech_tokens(llm, config.train_special_tokens)
        if config.use_lora:
            llm = apply_lora(llm, config)
        else:
            for p in llm.parameters():
                p.requires_grad_(False)
        self.llm = llm

    def _init_speech_tokens(self, llm: nn.Module, trainable: bool) -> None:
        # Only <start_speech> and <end_speech> are ever embedded (<speech> is replaced by
        # frames), so only their rows are kept: a parameter that never gets a gradient
        # would stall DDP.
        ids = torch.tensor([self.prompt.token_id(START_SPEECH), self.prompt.token_id(END_SPEECH)])
        rows = llm.get_input_embeddings().weight.detach()[ids].clone().float()
        self.register_buffer("speech_token_ids", ids, persistent=False)
        if trainable:
            self.speech_token_embeddings = nn.Parameter(rows)
        else:
            # Still stored in checkpoints: rows added by resizing are random at load time.
            self.register_buffer("speech_token_embeddings", rows)

    @property
    def num_slots(self) -> int:
        return len(self.encoders)

    @property
    def method_name(self) -> str:
        return "mose" if self.num_slots > 1 else "llm-asr"

    def train(self, mode: bool = True) -> "LlmAsrModel":
        super().train(mode)
        self.encoders.eval()  # frozen encoders never leave eval mode
        return self

    # ----------------------------------------------------------------- building blocks
    def embed_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """LLM token embeddings, with the speech tokens' rows taken from our own tensor."""
        emb = self.llm.get_input_embeddings()(ids)
        match = ids.unsqueeze(-1) == self.speech_token_ids.to(ids.device)
        own = match.to(self.speech_token_embeddings.dtype) @ self.speech_token_embeddings
        return torch.where(match.any(-1, keepdim=True), own.to(emb.dtype), emb)

    def keep_frozen_outputs(self, max_bytes: int) -> FrozenOutputStore:
        """From now on keep each utterance's encoder outputs (by cut id, up to
        ``max_bytes``) for the next time it comes: only valid while the same cut id
        always brings the same input, i.e. without augmentation."""
        self.frozen_store = FrozenOutputStore(max_bytes)
        return self.frozen_store

    def _run_encoders(self, x: torch.Tensor, x_lens: torch.Tensor, cut_ids: Optional[Sequence[str]]):
        store = self.frozen_store if cut_ids is not None else None
        encoded = store.get(cut_ids, x_lens, x.device) if store is not None else None
        if encoded is None:
            with torch.no_grad():
                encoded = [encoder(x, x_lens) for encoder in self.encoders]
            if store is not None:
                store.put(cut_ids, x_lens, encoded)
        return encoded

    def encode(self, x: torch.Tensor, x_lens: torch.Tensor, cache: Optional[dict] = None,
               cut_ids: Optional[Sequence[str]] = None) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        """Per slot: projected frames (B, T_s, H) in the LLM's dtype and their lengths.

        ``cache`` (a dict kept for one batch) holds what does not change between the
        evaluations of a zeroth-order step: the frozen encoders' outputs always, and the
        projected frames too when no projector parameter is tuned. With ``cut_ids`` and
        a store (``keep_frozen_outputs``) the encoder outputs outlive the batch."""
        if cache is not None and "speech" in cache:
            return cache["speech"]
        dtype = self.llm.get_input_embeddings().weight.dtype
        encoded = cache.get("encoded") if cache is not None else None
        if encoded is None:
            encoded = self._run_encoders(x, x_lens, cut_ids)
            if cache is not None:
                cache["encoded"] = encoded
        out = []
        for (enc, enc_lens), projector in zip(encoded, self.projectors):
            frames, lens = projector(enc.float(), enc_lens)
            out.append((frames.to(dtype), lens))
        if cache is not None and not any(p.requires_grad for p in self.projectors.parameters()):
            cache["speech"] = out
        return out

    def build_prompts(
        self,
        speech: List[Tuple[torch.Tensor, torch.Tensor]],
        texts: Optional[Sequence[Union[str, Sequence[int]]]] = None,
        keep: Optional[torch.Tensor] = None,
    ) -> PromptBatch:
        """Prompts with the transcripts (a string, or target ids ending in <|im_end|>)
        as the answer; without ``texts`` the prompt ends at the assistant turn."""
        batch = speech[0][0].size(0)
        if keep is None:
            keep = torch.ones(batch, self.num_slots, dtype=torch.bool)
        if texts is not None and len(texts) != batch:
            raise ValueError(f"{len(texts)} transcripts for a batch of {batch} utterances")
        targets = [None] * batch if texts is None else [
            self.prompt.target_ids(t) if isinstance(t, str) else list(t) for t in texts]
        layouts = [self.prompt.layout(keep[i].tolist(), targets[i]) for i in range(batch)]
        return assemble(layouts, speech, self.embed_ids)

    # ------------------------------------------------------------------------ training
    def forward(self, x: torch.Tensor, x_lens: torch.Tensor, texts: Sequence[str],
                keep: Optional[torch.Tensor] = None, cache: Optional[dict] = None,
                cut_ids: Optional[Sequence[str]] = None) -> LlmAsrOutput:
        """Teacher-forced loss. ``keep`` (B, S) bool forces which slots each prompt
        holds; by default MoSE slot dropout draws it in training."""
        speech = self.encode(x, x_lens, cache, cut_ids)
        if keep is None and self.training and self.num_slots > 1 and self.config.mose_slot_dropout > 0:
            keep = sample_slot_mask(x.size(0), self.num_slots, self.config.mose_slot_dropout)
        logits, targets = self._label_logits(self.build_prompts(speech, texts, keep))
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1),
                               ignore_index=IGNORE_ID, reduction="sum")
        # A slot dropped from the whole batch must still reach DDP's gradient hooks.
        loss = loss + sum(0.0 * frames.sum() for frames, _ in speech)
        valid = targets != IGNORE_ID
        correct = ((logits.argmax(-1) == targets) & valid).sum()
        return LlmAsrOutput(loss=loss, num_tokens=int(valid.sum()), num_correct=correct)

    def _label_logits(self, prompts: PromptBatch) -> Tuple[torch.Tensor, torch.Tensor]:
        """Next-token logits (float) at the label positions and the labels (IGNORE_ID elsewhere)."""
        # Left padding puts every label at the end: only those logits are computed.
        num_label_positions = int((prompts.labels != IGNORE_ID).sum(1).max()) + 1
        logits = self.llm(
            inputs_embeds=prompts.inputs_embeds,
            attention_mask=prompts.attention_mask,
            position_ids=prompts.position_ids,
            logits_to_keep=num_label_positions,
            use_cache=False,
        ).logits
        return logits[:, :-1].float(), prompts.labels[:, -num_label_positions + 1 :]

    # ---- expected WER (speechadapt.adapt.objectives) ---------------------------------
    @torch.no_grad()
    def sample_hypotheses(self, batch, num_samples: int, generator: torch.Generator, temperature: float = 1.0,
                          max_new_tokens: int = 64):
        """``num_samples`` sampled generations per utterance (token ids, and texts ``[n][B]``)."""
        batch = batch.to(self.device)
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        with torch.random.fork_rng(devices=[]):  # generate() samples from the global RNG
            torch.manual_seed(seed)
            ids = self.decode(batch.inputs, batch.input_lens, max_new_tokens=max_new_tokens, return_ids=True,
                              do_sample=True, temperature=temperature, top_k=0, top_p=1.0,
                              num_return_sequences=num_samples)
        b = len(batch)
        hyps = [[ids[j * num_samples + i] for j in range(b)] for i in range(num_samples)]  # generate is b-major
        texts = [[self.tokenizer.decode(h, skip_special_tokens=True).strip().lower() for h in row] for row in hyps]
        return (hyps, temperature), texts

    def hypothesis_log_probs(self, batch, hyps, cache: Optional[dict] = None) -> torch.Tensor:
        """Log-probabilities (n, B) of sampled transcripts (+ <|im_end|>) under the current
        weights (divided by the sampling temperature)."""
        hyps, temperature = hyps
        batch = batch.to(self.device)
        n, b = len(hyps), len(batch)
        speech = [(frames.repeat(n, 1, 1), lens.repeat(n)) for frames, lens in self.encode(
            batch.inputs, batch.input_lens, cache)]
        targets = [list(hyps[i][j]) + [self.prompt.im_end_id] for i in range(n) for j in range(b)]
        return self.target_log_likelihoods(speech, targets).reshape(n, b) / temperature

    def target_log_likelihoods(self, speech, targets: List[List[int]]) -> torch.Tensor:
        """Teacher-forced log-likelihood (N,) of each target id sequence after its row of
        projected speech (``encode``'s output), summed over the target's tokens."""
        logits, labels = self._label_logits(self.build_prompts(speech, targets))
        picked = logits.log_softmax(-1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        return (picked * (labels != IGNORE_ID)).sum(1)

    def compute_loss(self, batch, cache: Optional[dict] = None) -> Tuple[torch.Tensor, MetricsTracker]:
        """Summed token cross-entropy of a SpeechBatch; the tracker's "frames" are the
        label tokens (the normaliser), "acc" the teacher-forced argmax hits."""
        batch = batch.to(self.device)
        out = self(batch.inputs, batch.input_lens, batch.texts, cache=cache, cut_ids=batch.cut_ids)
        return out.loss, loss_metrics(out.loss, out.num_tokens, len(batch), acc=out.num_correct)

    # ------------------------------------------------------------------------ decoding
    @torch.no_grad()
    def transcribe(self, batch, options: DecodeOptions = DecodeOptions()) -> List[str]:
        batch = batch.to(self.device)
        if options.ctc_weight > 0:
            from speechadapt.models.llm_asr_rescore import ctc_rescored_transcripts

            return ctc_rescored_transcripts(self, batch, options)
        return self.decode(batch.inputs, batch.input_lens, max_new_tokens=options.max_new_tokens,
                           num_beams=options.num_beams)

    @torch.no_grad()
    def decode(
        self,
        x: torch.Tensor,
        x_lens: torch.Tensor,
        max_new_tokens: int = 64,
        num_beams: int = 1,
        return_ids: bool = False,
        **generate_kwargs,
    ):
        """Batched generation with a KV cache (greedy when num_beams == 1), all slots used.

        Returns lower-cased, stripped transcripts (or the generated token ids, up to and
        excluding <|im_end|>, when ``return_ids``). Extra keyword arguments go to
        ``generate`` (e.g. ``length_penalty``, ``min_new_tokens``).
        """
        return self.generate_from_speech(self.encode(x, x_lens), max_new_tokens, num_beams, return_ids,
                                         **generate_kwargs)

    def generate_from_speech(self, speech, max_new_tokens: int = 64, num_beams: int = 1, return_ids: bool = False,
                             **generate_kwargs):
        """``decode`` from projected speech (``encode``'s output)."""
        prompts = self.build_prompts(speech)
        stop_ids = self.stop_token_ids()
        out = self.llm.generate(
            inputs_embeds=prompts.inputs_embeds,
            attention_mask=prompts.attention_mask,
            max_new_tokens=max_new_tokens,
            num_beams=num_beams,
            use_cache=True,
            eos_token_id=stop_ids,
            pad_token_id=stop_ids[-1],
            **{**PLAIN_SEARCH, **generate_kwargs},
        )
        ids = [_until(row.tolist(), stop_ids) for row in out]
        if return_ids:
            return ids
        return [self.tokenizer.decode(t, skip_special_tokens=True).strip().lower() for t in ids]

    # --------------------------------------------------------------------- checkpoints
    def trainable_state_dict(self) -> Dict[str, torch.Tensor]:
        """Trainable parameters and buffers only (frozen encoders and base LLM weights
        come from --encoder-ckpt and --llm-dir): what a LoRA checkpoint holds."""
        from speechadapt.training.checkpoint import model_state_dict

        return model_state_dict(self, trainable_only=True)

    def load_weights(self, state: Dict[str, torch.Tensor]) -> None:
        """A trainable-only checkpoint (the usual one) or a complete state dict."""
        if set(state) == set(self.state_dict()):
            self.load_state_dict(state, strict=True)
        else:
            self.load_trainable_state_dict(state)

    def spec(self) -> Dict[str, Any]:
        return {"kind": "llm_asr", "config": config_to_dict(self.config), **self.sources}

    def load_trainable_state_dict(self, state: Dict[str, torch.Tensor]) -> None:
        """The trainable entries, plus frozen weights of this model the file overrides
        (a merge's LoRA base weights with the adapters folded in): all loaded."""
        expected = set(self.trainable_state_dict())
        frozen = set(self.state_dict()) - expected
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected - frozen)
        if missing or unexpected:
            raise KeyError(
                f"LLM-ASR checkpoint does not match this model: missing {missing[:5]} "
                f"({len(missing)} in all), unexpected {unexpected[:5]} ({len(unexpected)} in all); "
                f"check --use-lora/--lora-r, the encoder count and --train-special-tokens"
            )
        self.load_state_dict(state, strict=False)

    def stop_token_ids(self) -> List[int]:
        """<|im_end|> ends the answer; the pad token (<|endoftext|>) stops it too."""
        pad = self.tokenizer.pad_token_id
        return [self.prompt.im_end_id] + ([pad] if pad is not None and pad != self.prompt.im_end_id else [])

    def num_trainable(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


def _projector(encoder: nn.Module, llm: nn.Module, tokenizer, config: LlmAsrConfig, output_rms) -> nn.Module:
    """A frame-stacking projector; for an encoder that passes CTC posteriors (``ctc_vocab``,
    see models/ctc_compress.py) the projector that starts on the pieces' token embeddings."""
    hidden = llm.get_input_embeddings().embedding_dim
    if getattr(encoder, "ctc_vocab", 0):
        from speechadapt.models.ctc_compress import CtcTokenProjector, piece_embedding_table

        if config.stack_k != 1:
            raise ValueError(f"an encoder with CTC posteriors gives one vector per piece: use --stack-k 1, "
                             f"not {config.stack_k}")
        table = piece_embedding_table(encoder.piece_texts, tokenizer,
                                      llm.get_input_embeddings().weight.detach().float(), skip=(encoder.blank_id,))
        return CtcTokenProjector(encoder.hidden_dim, encoder.ctc_vocab, hidden, table, config.projector_dropout)
    return FrameStackProjector(_output_dim(encoder), config.stack_k, hidden, config.projector_dropout, output_rms)


def _output_dim(encoder: nn.Module) -> int:
    dim = getattr(encoder, "output_dim", None)
    if not isinstance(dim, int):
        raise AttributeError(f"{type(encoder).__name__} has no integer `output_dim`; the projector needs it")
    return dim


def _until(ids: List[int], stop_ids: Sequence[int]) -> List[int]:
    for n, token in enumerate(ids):
        if token in stop_ids:
            return ids[:n]
    return ids
