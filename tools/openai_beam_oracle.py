"""Make fixtures/oracle/openai_beam_whisperkv_mel.json: openai-whisper's beam search on whisperkv's own log-mel.

    python tools/openai_beam_oracle.py export          # (whisperkv's venv) weights + mel windows -> ORACLE_WORK
    /path/to/openai-venv/bin/python tools/openai_beam_oracle.py decode   # (torch + openai-whisper) -> the json

Why: ../shared/oracle/openai_beam.json was made from audio that ffmpeg (libswresample) resampled; whisperkv
resamples with its own filter (reference/audio.py), which differs near 8 kHz. On a 16 kHz file the two mels
are the same; on the 22.05 kHz ljspeech clip a beam boundary (5th vs 6th candidate, 0.006 apart) falls the
other way. Feeding openai-whisper whisperkv's mel isolates the decoding: the beam search itself is then
compared with no resampler in between. Made with openai-whisper 20250625 and torch 2.13.0 (CPU, float32,
2 threads), loading the bundled tiny.en weights (the canonical state dict whisperkv reads from model.bin).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = Path(os.environ.get("ORACLE_WORK", "/tmp/whisperkv-oracle"))
OUT = ROOT / "fixtures" / "oracle" / "openai_beam_whisperkv_mel.json"
AUDIO = [ROOT.parent / "shared" / "audio", ROOT / "fixtures" / "audio"]


def export() -> None:
    import dataclasses

    import numpy as np

    from whisperkv.reference.audio import open_audio
    from whisperkv.reference.weights import load_checkpoint

    WORK.mkdir(parents=True, exist_ok=True)
    ck = load_checkpoint()
    np.savez(WORK / "weights.npz", **ck.weights)
    (WORK / "dims.json").write_text(json.dumps(dataclasses.asdict(ck.dims)))
    clips = sorted({p.name for d in AUDIO if d.is_dir() for p in d.glob("*.wav")})
    for clip in clips:
        path = next(d / clip for d in AUDIO if (d / clip).is_file())
        mels = [m for _, m in open_audio(path, ck.dims.n_mels).mel_windows(ck.dims.n_mel_frames)]
        np.save(WORK / f"{clip}.npy", np.stack(mels))
    print(f"exported {len(clips)} clips to {WORK}")


def decode() -> None:
    import numpy as np
    import torch
    import whisper
    from whisper.model import ModelDimensions, Whisper

    torch.set_num_threads(2)
    model = Whisper(ModelDimensions(**json.loads((WORK / "dims.json").read_text())))
    weights = np.load(WORK / "weights.npz")
    model.load_state_dict({k: torch.from_numpy(weights[k]) for k in weights.files})
    model.eval()
    options = whisper.DecodingOptions(beam_size=5, temperature=0.0, without_timestamps=True, language="en",
                                      fp16=False)
    out = {"made_with": f"openai-whisper {whisper.__version__}, torch {torch.__version__}, beam_size 5, "
                        "temperature 0, without_timestamps, on whisperkv's log-mel windows", "clips": {}}
    for npy in sorted(WORK.glob("*.wav.npy")):
        windows = []
        for mel in np.load(npy):
            r = whisper.decode(model, torch.from_numpy(mel), options)
            windows.append({"tokens": r.tokens, "avg_logprob": r.avg_logprob, "text": r.text})
        out["clips"][npy.name[: -len(".npy")]] = windows
        print(npy.name, [w["text"][:40] for w in windows], flush=True)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    tmp = OUT.with_suffix(".tmp")
    tmp.write_text(json.dumps(out, indent=1) + "\n")
    tmp.replace(OUT)


if __name__ == "__main__":
    {"export": export, "decode": decode}[sys.argv[1]]()
