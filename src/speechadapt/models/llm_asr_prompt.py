"""The LLM-ASR prompt: token layout, speech splicing, left padding and labels.

The prompt is the chat template written out literally, with no system turn:

    <|im_start|>user\\n<start_speech><speech><end_speech><|im_end|>\\n<|im_start|>assistant\\n{text}<|im_end|>

With several encoders (MoSE) the user turn holds one ``<start_speech><speech><end_speech>``
group per encoder, in encoder order; a slot dropped in training is left out whole.
Each ``<speech>`` is replaced by that utterance's projected frames, so prompts differ
in length; the batch is left-padded so every transcript ends at the last position
(what ``generate`` needs, and what lets the loss keep only the last logits).
"""

from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import torch

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
START_SPEECH = "<start_speech>"
SPEECH = "<speech>"
END_SPEECH = "<end_speech>"
SPEECH_TOKENS = (START_SPEECH, SPEECH, END_SPEECH)
IGNORE_ID = -100

_HEAD = f"{IM_START}user\n"
_TAIL = f"{IM_END}\n{IM_START}assistant\n"


def prompt_text(num_slots: int = 1, text: Optional[str] = None) -> str:
    """The literal prompt string (for logs, docs and tests); ``text`` is lower-cased."""
    slots = f"{START_SPEECH}{SPEECH}{END_SPEECH}" * num_slots
    out = f"{_HEAD}{slots}{_TAIL}"
    if text is not None:
        out += f"{text.lower()}{IM_END}"
    return out


@dataclass
class Segment:
    """A run of prompt tokens, or the speech frames of one slot (``slot`` set)."""

    ids: Optional[torch.Tensor] = None
    slot: Optional[int] = None
    is_target: bool = False


@dataclass
class PromptBatch:
    inputs_embeds: torch.Tensor  # (B, L, H), left-padded with zeros
    attention_mask: torch.Tensor  # (B, L) long, 0 on padding
    position_ids: torch.Tensor  # (B, L), 0 on padding, counting from the first real token
    labels: torch.Tensor  # (B, L), IGNORE_ID except transcript tokens and the closing <|im_end|>


class PromptBuilder:
    """Tokenises the fixed parts of the prompt once and lays out each utterance."""

    def __init__(self, tokenizer, num_slots: int = 1):
        if num_slots < 1:
            raise ValueError(f"num_slots must be >= 1, got {num_slots}")
        self.tokenizer = tokenizer
        self.num_slots = num_slots
        self.head_ids = self._encode(_HEAD)
        self.tail_ids = self._encode(_TAIL)
        self.im_end_id = self.token_id(IM_END)
        self.start_id, self.speech_id, self.end_id = (self.token_id(t) for t in SPEECH_TOKENS)

    def _encode(self, text: str) -> List[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def token_id(self, token: str) -> int:
        ids = self._encode(token)
        if len(ids) != 1:
            raise ValueError(
                f"the tokenizer has no single token for {token!r} (got ids {ids}); "
                f"add the speech tokens with speechadapt.models.hf.add_special_tokens first"
            )
        return ids[0]

    def target_ids(self, text: str) -> List[int]:
        """Transcript tokens (lower-cased) and the closing <|im_end|>: what the loss sees."""
        return self._encode(text.lower()) + [self.im_end_id]

    def layout(self, keep: Sequence[bool], target: Optional[List[int]] = None) -> List[Segment]:
        """Segments for one utterance; ``keep[s]`` says whether slot s is in the prompt."""
        if len(keep) != self.num_slots:
            raise ValueError(f"expected {self.num_slots} slot flags, got {len(keep)}")
        if not any(keep):
            raise ValueError("every speech slot was dropped; keep at least one")
        long = lambda ids: torch.tensor(ids, dtype=torch.long)  # noqa: E731
        segments = [Segment(ids=long(self.head_ids))]
        for slot, kept in enumerate(keep):
            if kept:
                segments += [Segment(ids=long([self.start_id])), Segment(slot=slot), Segment(ids=long([self.end_id]))]
        segments.append(Segment(ids=long(self.tail_ids)))
        if target is not None:
            segments.append(Segment(ids=long(target), is_target=True))
        return segments


def left_pad(seqs: List[torch.Tensor], value: float = 0.0) -> Tuple[torch.Tensor, torch.Tensor]:
    """Stack (L_i, ...) tensors as (B, L_max, ...) padded on the left; mask 1 on real items."""
    max_len = max(s.size(0) for s in seqs)
    padded, mask = [], []
    for s in seqs:
        pad = max_len - s.size(0)
        filler = s.new_full((pad,) + tuple(s.shape[1:]), value)
        padded.append(torch.cat([filler, s], dim=0))
        mask.append(torch.cat([torch.zeros(pad, dtype=torch.long), torch.ones(s.size(0), dtype=torch.long)]))
    return torch.stack(padded), torch.stack(mask).to(seqs[0].device)


def assemble(
    layouts: List[List[Segment]],
    speech: List[Tuple[torch.Tensor, torch.Tensor]],
    embed_ids: Callable[[torch.Tensor], torch.Tensor],
) -> PromptBatch:
    """Splice speech frames into embedded prompts and left-pad the batch.

    ``speech[s]`` is slot s's projector output ``(frames (B, T_s, H), lens (B,))``.
    Everything is built with ``torch.cat`` so gradients reach the projectors and any
    trainable token rows (no in-place writes into a leaf tensor).
    """
    device = speech[0][0].device
    id_segments = [seg.ids for segs in layouts for seg in segs if seg.ids is not None]
    flat = torch.cat(id_segments).to(device)
    embedded = iter(torch.split(embed_ids(flat), [len(t) for t in id_segments]))
    dtype = speech[0][0].dtype
    rows, labels = [], []
    for utt, segs in enumerate(layouts):
        parts, part_labels = [], []
        for seg in segs:
            if seg.slot is not None:
                frames, lens = speech[seg.slot]
                n = int(lens[utt])
                parts.append(frames[utt, :n])
                part_labels.append(torch.full((n,), IGNORE_ID, dtype=torch.long, device=device))
            else:
                parts.append(next(embedded).to(dtype))
                ids = seg.ids.to(device)
                part_labels.append(ids if seg.is_target else torch.full_like(ids, IGNORE_ID))
        rows.append(torch.cat(parts, dim=0))
        labels.append(torch.cat(part_labels))
    inputs_embeds, attention_mask = left_pad(rows, 0.0)
    label_tensor, _ = left_pad(labels, IGNORE_ID)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0) * attention_mask
    return PromptBatch(inputs_embeds, attention_mask, position_ids, label_tensor)
