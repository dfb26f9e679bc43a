"""Model dimensions: the ten numbers that fix every tensor shape of a Whisper checkpoint."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class ModelDims:
    n_mels: int  # mel bins of the input spectrogram (80 for tiny .. large-v2)
    n_audio_ctx: int  # encoder positions: 3000 mel frames / 2 (conv2 has stride 2)
    n_audio_state: int
    n_audio_head: int
    n_audio_layer: int
    n_vocab: int
    n_text_ctx: int  # decoder positions (448): the hard limit on prompt + sampled tokens
    n_text_state: int
    n_text_head: int
    n_text_layer: int

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"ModelDims.{name} must be a positive int, got {value!r}")
        if self.n_audio_state % self.n_audio_head:
            raise ValueError(f"n_audio_state {self.n_audio_state} not divisible by n_audio_head {self.n_audio_head}")
        if self.n_text_state % self.n_text_head:
            raise ValueError(f"n_text_state {self.n_text_state} not divisible by n_text_head {self.n_text_head}")

    @property
    def n_mel_frames(self) -> int:
        """Mel frames of one window: conv2's stride 2 halves them to n_audio_ctx."""
        return 2 * self.n_audio_ctx

    @property
    def audio_head_dim(self) -> int:
        return self.n_audio_state // self.n_audio_head

    @property
    def text_head_dim(self) -> int:
        return self.n_text_state // self.n_text_head

    @property
    def is_multilingual(self) -> bool:
        # openai-whisper's own rule: the .en vocabulary has 51864 entries, multilingual ones 51865+.
        return self.n_vocab >= 51865

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    def key(self) -> str:
        """A short stable string for cache keys and messages."""
        d = self
        return (
            f"mel{d.n_mels}-a{d.n_audio_ctx}x{d.n_audio_state}h{d.n_audio_head}l{d.n_audio_layer}"
            f"-t{d.n_text_ctx}x{d.n_text_state}h{d.n_text_head}l{d.n_text_layer}-v{d.n_vocab}"
        )
