"""Transcribe your own audio files with a trained model of any kind (icefall's pretrained.py).

    python -m speechadapt.bin.transcribe --exp-dir exp/full/ctc --epoch 8 --avg 3 \\
        --use-averaged-model true a.wav b.flac
    python -m speechadapt.bin.transcribe --exp-dir exp/full/llm_asr --checkpoint exp/full/llm_asr/epoch-6.pt \\
        --wav-scp wav.scp --output hyps.txt

The model is rebuilt from exp_dir/model.json and the weights chosen by --checkpoint or
--epoch/--iter/--avg/--use-averaged-model/--best-valid. Any sample rate is resampled to
16 kHz and multi-channel audio mixed down, each with a notice on stderr. Every input
is checked before the model is loaded: a missing, empty or corrupt file stops the run
with an error naming it. Output: one ``id text`` line per input, in input order (ids
are file stems, or the first column of --wav-scp), on stdout or in --output.
"""

import argparse
import logging
import sys
from pathlib import Path
from typing import List, Tuple

import torch

from speechadapt.data.datamodule import AsrDataModule, DataConfig
from speechadapt.data.dataset import AudioReadError
from speechadapt.data.manifests import AudioFileError, load_recording
from speechadapt.models.interface import DecodeOptions
from speechadapt.models.registry import load_model
from speechadapt.training.averaging import WeightSelection
from speechadapt.utils.flags import add_dataclass_arguments, dataclass_from_args, parse_args
from speechadapt.utils.io import atomic_write_text


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("audio", nargs="*", help="audio files (wav, flac, ... anything soundfile reads)")
    p.add_argument("--wav-scp", type=Path, default=None, help="Kaldi-style 'id path' lines")
    p.add_argument("--exp-dir", type=Path, required=True, help="holds model.json and the checkpoints")
    p.add_argument("--output", type=Path, default=None, help="write the 'id text' lines here (default: stdout)")
    p.add_argument("--max-duration", type=float, default=100.0, help="seconds of audio per batch")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    add_dataclass_arguments(p, WeightSelection, "weights")
    add_dataclass_arguments(p, DecodeOptions, "search")
    return p


def read_inputs(files: List[str], wav_scp) -> List[Tuple[str, str]]:
    """(id, path) pairs; ids must be unique."""
    pairs = [(Path(f).stem, f) for f in files]
    if wav_scp is not None:
        if not wav_scp.is_file():
            raise AudioFileError(f"--wav-scp {wav_scp}: no such file")
        for number, line in enumerate(wav_scp.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            parts = line.split(maxsplit=1)
            if len(parts) != 2:
                raise AudioFileError(f"{wav_scp}:{number}: expected 'id path', got {line!r}")
            pairs.append((parts[0], parts[1].strip()))
    if not pairs:
        raise AudioFileError("nothing to transcribe: give audio files or --wav-scp")
    seen = {}
    for utt, path in pairs:
        if utt in seen:
            raise AudioFileError(f"two inputs share the id '{utt}': {seen[utt]} and {path} (use --wav-scp "
                                 f"with distinct ids)")
        seen[utt] = path
    return pairs


def audio_cuts(pairs: List[Tuple[str, str]]):
    """One cut per input, checked; every unusable file is reported at once."""
    from lhotse import CutSet

    cuts, problems = [], []
    for utt, path in pairs:
        try:
            recording = load_recording(path, utt, on_wrong_rate="resample", allow_multichannel=True)
        except AudioFileError as e:
            problems.append(str(e))
            continue
        if recording.num_channels > 1:
            logging.warning(f"{path}: {recording.num_channels} channels, mixed down to mono")
        cuts.append(recording.to_cut())
    if problems:
        raise AudioFileError(f"{len(problems)} of {len(pairs)} inputs cannot be used:\n  " + "\n  ".join(problems))
    return CutSet.from_cuts(cuts)


def transcribe(args: argparse.Namespace) -> List[Tuple[str, str]]:
    pairs = read_inputs(args.audio, args.wav_scp)
    cuts = audio_cuts(pairs)
    model, weights = load_model(args.exp_dir, dataclass_from_args(WeightSelection, args), args.device)
    options = dataclass_from_args(DecodeOptions, args)
    config = DataConfig(max_duration=args.max_duration, bucketing_sampler=False, shuffle=False, num_workers=0,
                        on_the_fly_feats=True)
    loader = AsrDataModule(config, model.input_kind).test_dataloaders(cuts, require_text=False)
    hyps = {}
    for batch in loader:
        hyps.update(zip(batch.cut_ids, model.transcribe(batch, options)))
    logging.info(f"transcribed {len(hyps)} inputs with {weights}")
    return [(utt, hyps[utt]) for utt, _ in pairs]


def main(argv=None) -> List[Tuple[str, str]]:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stderr)
    args = parse_args(get_parser(), argv, entry_point="transcribe")
    try:
        lines = transcribe(args)
    except (AudioFileError, AudioReadError) as e:
        raise SystemExit(f"error: {e}") from None
    text = "".join(f"{utt} {hyp}\n" for utt, hyp in lines)
    if args.output:
        atomic_write_text(text, args.output)
    else:
        sys.stdout.write(text)
    return lines


if __name__ == "__main__":
    main()
