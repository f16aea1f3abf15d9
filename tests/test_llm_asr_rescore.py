"""Joint CTC/LLM rescoring of LLM-ASR: the candidates, their two scores, the choice by
weight, the dev-set grid of ``bin.decode`` and the refusals."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from speechadapt.data.batch import SpeechBatch
from speechadapt.models.ctc import ZipformerCtc
from speechadapt.models.ctc_base import BpeTokenizer
from speechadapt.models.hf.fixtures import make_tiny_qwen2
from speechadapt.models.interface import DecodeOptions
from speechadapt.models.llm_asr import LlmAsrConfig, LlmAsrModel
from speechadapt.models.llm_asr_build import load_frozen_encoder, load_llm_for_asr
from speechadapt.models.llm_asr_rescore import Candidates, rescoring_candidates
from speechadapt.models.zipformer import ZipformerEncoder, get_preset

from mini_corpus import PREFIX, TEXTS, write_split  # noqa: E402 (tests/ is on sys.path)

LORA_SMALL = dict(lora_r=4, lora_alpha=8)


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """A BPE model, two random Zipformer-CTC checkpoints with a model.json naming it, and a tiny Qwen2."""
    from speechadapt.data.bpe import prepare_lang_bpe

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("rescore")
    bpe_model = prepare_lang_bpe(TEXTS, root / "lang", 30)
    ctcs = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        ctc = ZipformerCtc(get_preset("tiny", pad_invariant=True), vocab_size=30).eval()
        (root / f"ctc{seed}").mkdir()
        torch.save({"model": ctc.state_dict()}, root / f"ctc{seed}" / "ctc.pt")
        (root / f"ctc{seed}" / "model.json").write_text(json.dumps({"bpe_model": str(bpe_model)}))
        ctcs.append(ctc)
    llm_dir = make_tiny_qwen2(root / "qwen2", TEXTS, tokenizer_vocab_size=300, hidden_size=64, intermediate_size=128)
    return dict(root=root, bpe=BpeTokenizer(bpe_model), ctcs=ctcs, llm_dir=llm_dir)


def make_model(parts, num_encoders=1):
    encoders = [load_frozen_encoder(parts["root"] / f"ctc{i}" / "ctc.pt", "tiny", compress="ctc-tokens")
                for i in range(num_encoders)]
    llm, tokenizer = load_llm_for_asr(parts["llm_dir"])
    torch.manual_seed(3)
    return LlmAsrModel(encoders, llm, tokenizer, LlmAsrConfig(stack_k=1, **LORA_SMALL)).eval()


def batch_of(lens, seed=0):
    g = torch.Generator().manual_seed(seed)
    lens = torch.tensor(lens)
    x = torch.randn(len(lens), int(lens.max()), 80, generator=g)
    n = len(lens)
    return SpeechBatch(x, lens, list(TEXTS[:n]), [f"u{i}" for i in range(n)], [0.01 * int(v) for v in lens])


def test_candidates_are_the_beam_and_each_ctc_transcript_with_their_true_log_likelihoods(parts):
    model = make_model(parts, num_encoders=2)
    batch = batch_of([90, 64])
    cands = rescoring_candidates(model, batch, num_beams=2, max_new_tokens=6)
    beams = model.decode(batch.inputs, batch.input_lens, max_new_tokens=6, num_beams=2, num_return_sequences=2)
    for i in range(len(batch)):
        assert len(cands.texts[i]) == len(set(cands.texts[i])) <= 4  # 2 beams + 2 CTC transcripts, deduplicated
        for beam in beams[2 * i: 2 * i + 2]:
            assert beam in cands.texts[i]
    # Each encoder's CTC greedy transcript is a candidate.
    ctc_logs = []
    for ctc in parts["ctcs"]:
        log_probs, lens = ctc(batch.inputs, batch.input_lens)
        ctc_logs.append((log_probs, lens))
        for i, ids in enumerate(ctc.greedy_decode(batch.inputs, batch.input_lens)):
            assert parts["bpe"].decode(ids).strip().lower() in cands.texts[i]
    for i in range(len(batch)):
        x, lens = batch.inputs[i:i + 1, : int(batch.input_lens[i])], batch.input_lens[i:i + 1]
        for text, llm, ctc_score in zip(cands.texts[i], cands.llm[i], cands.ctc[i]):
            # LLM: minus the summed teacher-forced loss of that transcript, one utterance alone.
            with torch.no_grad():
                loss = float(model(x, lens, [text]).loss)
            assert llm == pytest.approx(-loss, abs=1e-3)
            # CTC: the mean over encoders of minus the CTC loss of its BPE pieces.
            targets = torch.tensor(parts["bpe"].pieces(text), dtype=torch.long)
            want = sum(-float(F.ctc_loss(lp[i:i + 1, : int(ln[i])].detach().transpose(0, 1), targets.unsqueeze(0),
                                         ln[i:i + 1], torch.tensor([len(targets)]), reduction="sum"))
                       for lp, ln in ctc_logs) / 2
            assert ctc_score == pytest.approx(want, rel=1e-4, abs=1e-3)


def test_the_weight_chooses_between_the_llm_and_the_ctc_opinion():
    cands = Candidates(texts=[["a", "b", "c"]], llm=[[-1.0, -5.0, -2.0]], ctc=[[-9.0, -1.0, -float("inf")]])
    assert cands.pick(0.0) == ["a"]  # the LLM's own best (the first candidate), not the rescored one
    assert Candidates([["a", "b"]], [[-3.0, -1.0]], [[0.0, 0.0]]).pick(0.0) == ["a"]
    assert cands.pick(1.0) == ["b"]
    assert cands.pick(0.5) == ["b"]  # 0.5 (-1 - 9) = -5 < 0.5 (-5 - 1) = -3
    assert cands.pick(0.2) == ["a"]  # 0.8 (-1) + 0.2 (-9) = -2.6 > 0.8 (-5) + 0.2 (-1) = -4.2
    assert cands.subset([0]).texts == [["a", "b", "c"]] and Candidates([], [], []).pick(0.3) == []
    # A bonus per word: "b c" (2 words) overtakes "a" once 0.5 (-3 - 3) + 2 b > 0.5 (-1 - 1) + b, i.e. b > 2.
    short_first = Candidates(texts=[["a", "b c"]], llm=[[-1.0, -3.0]], ctc=[[-1.0, -3.0]])
    assert short_first.pick(0.5) == ["a"] and short_first.pick(0.5, 1.5) == ["a"]
    assert short_first.pick(0.5, 2.5) == ["b c"]
    assert short_first.pick(0.0, 5.0) == ["a"]  # weight 0: the LLM's own best, whatever the bonus


def test_transcribe_with_a_ctc_weight_returns_the_best_scored_candidate(parts):
    model = make_model(parts)
    batch = batch_of([80, 70, 50], seed=1)
    cands = rescoring_candidates(model, batch, num_beams=2, max_new_tokens=6)
    for w in (0.3, 1.0):
        got = model.transcribe(batch, DecodeOptions(decoding_method="beam", beam_size=2, max_new_tokens=6,
                                                    ctc_weight=w))
        for i, hyp in enumerate(got):
            scores = [(1 - w) * a + w * b if w < 1 else b for a, b in zip(cands.llm[i], cands.ctc[i])]
            assert hyp == cands.texts[i][max(range(len(scores)), key=scores.__getitem__)]
            assert not math.isnan(max(scores))
    assert DecodeOptions(decoding_method="beam", ctc_weight=0.3).key("epoch-2") == "beam4-ctc0.3-epoch-2"
    got = model.transcribe(batch, DecodeOptions(decoding_method="beam", beam_size=2, max_new_tokens=6,
                                                ctc_weight=0.3, length_bonus=2.0))
    assert got == cands.pick(0.3, 2.0)
    assert DecodeOptions(ctc_weight=0.3, length_bonus=2).key("epoch-2") == "greedy-ctc0.3-lb2-epoch-2"


def test_bad_ctc_weights_and_models_without_ctc_heads_are_refused(parts):
    with pytest.raises(ValueError, match=r"--ctc-weight must be in \[0, 1\]"):
        DecodeOptions(ctc_weight=1.5)
    with pytest.raises(ValueError, match="--length-bonus 1.0 acts in joint CTC/LLM rescoring only"):
        DecodeOptions(length_bonus=1.0)
    llm, tokenizer = load_llm_for_asr(parts["llm_dir"])
    torch.manual_seed(0)
    plain = LlmAsrModel([ZipformerEncoder(get_preset("tiny")).eval()], llm, tokenizer, LlmAsrConfig(**LORA_SMALL))
    with pytest.raises(ValueError, match="--encoder-compress ctc"):
        plain.transcribe(batch_of([60]), DecodeOptions(ctc_weight=0.5))
    model = make_model(parts)
    model.encoders[0].bpe_model = None  # e.g. icefall's checkpoint, no model.json beside it
    with pytest.raises(ValueError, match="no BPE model"):
        model.transcribe(batch_of([60]), DecodeOptions(ctc_weight=0.5))


def test_decode_tunes_the_ctc_weight_on_dev_and_decodes_the_tests_with_it(parts, tmp_path):
    from speechadapt.bin import decode, train

    root = tmp_path
    write_split(root, "train", TEXTS, 0)
    write_split(root, "dev", TEXTS[:3], 2)
    write_split(root, "test", TEXTS[3:6], 3)
    flags = ["--manifest-dir", str(root / "fbank"), "--cuts-prefix", PREFIX, "--max-duration", "6",
             "--num-workers", "0", "--enable-spec-aug", "false", "--num-buckets", "2"]
    common = ["--train-split", "train", "--num-epochs", "1", "--average-period", "1", "--tensorboard", "false",
              "--save-every-n", "0", *flags]
    train.main(["--model", "zipformer_ctc", "--lang-dir", str(parts["root"] / "lang"), "--regularize", "false",
                "--exp-dir", str(root / "ctc"), *common])
    exp = root / "llm"
    train.main(["--model", "llm_asr", "--llm-dir", str(parts["llm_dir"]), "--encoder-ckpt", str(root / "ctc/epoch-1.pt"),
                "--encoder-compress", "ctc-tokens", "--stack-k", "1", "--lora-r", "4", "--lora-alpha", "8",
                "--exp-dir", str(exp), *common])
    base = ["--exp-dir", str(exp), "--epoch", "1", "--max-new-tokens", "8", *flags]
    wers = decode.main([*base, "--test-sets", "test", "--decoding-method", "beam", "--beam-size", "2",
                        "--ctc-weight-grid", "0,0.5,1", "--length-bonus-grid", "0,3", "--tune-sets", "dev",
                        "--method", "llm-asr+ctc"])
    grids = list((exp / "decode").glob("ctc-weight-grid-*.json"))
    assert len(grids) == 1
    report = json.loads(grids[0].read_text())
    # weight 0 once (a bonus changes nothing there), each other weight with each bonus
    settings = [[0.0, 0.0], [0.5, 0.0], [0.5, 3.0], [1.0, 0.0], [1.0, 3.0]]
    assert report["settings"] == settings and len(report["wer"]["dev"]) == 5
    best = min(range(5), key=report["mean_wer"].__getitem__)
    assert [report["chosen"], report["chosen_length_bonus"]] == settings[best]
    w, b = settings[best]
    suffix = (f"-ctc{w:g}" if w > 0 else "") + (f"-lb{b:g}" if b else "")
    assert grids[0].name == f"ctc-weight-grid-beam2{suffix}-epoch-1-avg-1.json"
    record = json.loads((exp / "results.jsonl").read_text().splitlines()[-1])
    assert record["method"] == "llm-asr+ctc" and record["wer"] == pytest.approx(wers["test"], abs=1e-3)
    # Each grid point scored dev as decoding it with that --ctc-weight and --length-bonus does
    # (0: the plain beam search).
    for (w, b), dev_wer in zip(settings, report["wer"]["dev"]):
        again = decode.main([*base, "--test-sets", "dev,test", "--decoding-method", "beam", "--beam-size", "2",
                             "--ctc-weight", str(w), "--length-bonus", str(b), "--results", str(tmp_path / "a.jsonl")])
        assert again["dev"] == pytest.approx(dev_wer, abs=1e-6)
        if [w, b] == settings[best]:
            assert again["test"] == pytest.approx(wers["test"], abs=1e-6)
    with pytest.raises(ValueError, match="needs --tune-sets"):
        decode.main([*base, "--test-sets", "test", "--ctc-weight-grid", "0,0.5"])
    with pytest.raises(ValueError, match="is a zipformer_ctc model"):
        decode.main(["--exp-dir", str(root / "ctc"), "--epoch", "1", *flags, "--test-sets", "test",
                     "--ctc-weight", "0.5"])
