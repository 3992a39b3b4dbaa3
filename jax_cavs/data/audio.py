"""Waveform -> VGGish-style log-mel examples (spec_cavs.md §2.5).

Reproduces torchvggish's `waveform_to_examples` (vggish_input.py, mel_features.py,
vggish_params.py), which AVSBench feeds its frozen VGGish:
- int16 -> float by /32768, mono by averaging channels, resampling to 16 kHz (soxr through
  librosa here; torchvggish uses resampy);
- STFT: 400-sample (25 ms) periodic Hann window, 160-sample (10 ms) hop, FFT length 512 (the
  frame is zero-padded at its end), magnitude |rfft|, no centring: 1 + (L - 400) // 160 frames;
- mel: 64 HTK-mel bands (mel = 1127 ln(1 + f / 700)) between 125 and 7500 Hz, triangles built
  *in the mel domain* on the mel value of every FFT bin (mel_features.spectrogram_to_mel_matrix,
  which differs from librosa.filters.mel's Hz-domain triangles), DC bin weight 0;
- log(mel + 0.01); non-overlapping 96-frame (0.96 s) examples -> [N, 96, 64].
AVSBench zero-pads N to 10 examples (torchvggish vggish.py `_preprocess`); `log_mel_examples`
pads or truncates to the requested count.
`silent_log_mel` is the input of silence: log(0.01) in every bin. An all-zero log-mel is not
silence but a mel energy of 0.99 in every band, a loud broadband sound.

librosa's STFT centres a shorter window inside the FFT frame (56 zeros either side of the 400
taps for n_fft=512), so its frame f starts 56 samples before VGGish's; padding the waveform with
56 zeros on both sides makes the two framings identical (the magnitude of an rfft does not
depend on where inside the FFT buffer the windowed samples sit).
"""

from __future__ import annotations

import functools

import librosa
import numpy as np
import soundfile

SAMPLE_RATE = 16_000
WINDOW_LENGTH = 400  # 0.025 s
HOP_LENGTH = 160  # 0.010 s
FFT_LENGTH = 512  # 2 ** ceil(log2(WINDOW_LENGTH))
NUM_MEL_BANDS = 64
MEL_MIN_HZ = 125.0
MEL_MAX_HZ = 7500.0
LOG_OFFSET = 0.01
EXAMPLE_FRAMES = 96  # 0.96 s of STFT frames per example
_LIBROSA_WINDOW_OFFSET = (FFT_LENGTH - WINDOW_LENGTH) // 2


def int16_to_float(samples: np.ndarray) -> np.ndarray:
    """int16 PCM -> float32 in [-1, 1) (divides by 32768, as vggish_input.wavfile_to_examples)."""
    if samples.dtype != np.int16:
        raise ValueError(f'int16_to_float expects int16 samples, got {samples.dtype}; '
                         'float audio needs no conversion.')
    return samples.astype(np.float32) / 32768.0


def to_mono(waveform: np.ndarray) -> np.ndarray:
    """[num_samples] or [num_samples, channels] (soundfile layout) -> [num_samples] channel mean."""
    if waveform.ndim == 1:
        return waveform
    if waveform.ndim == 2:
        return waveform.mean(axis=1, dtype=np.float32)
    raise ValueError(f'to_mono expects [num_samples] or [num_samples, channels], got shape '
                     f'{waveform.shape}.')


def resample_to_16k(waveform: np.ndarray, sample_rate: int) -> np.ndarray:
    """Resamples a mono float waveform [L] from `sample_rate` to 16 kHz (soxr, high quality)."""
    if sample_rate <= 0:
        raise ValueError(f'sample_rate must be positive, got {sample_rate}.')
    if sample_rate == SAMPLE_RATE:
        return waveform.astype(np.float32, copy=False)
    return librosa.resample(waveform.astype(np.float32), orig_sr=sample_rate,
                            target_sr=SAMPLE_RATE, res_type='soxr_hq')


def load_waveform(path: str) -> np.ndarray:
    """Reads an audio file as a mono float32 16 kHz waveform [L] (int16 PCM scaled by 1/32768)."""
    try:
        samples, sample_rate = soundfile.read(path, dtype='int16', always_2d=True)
    except (RuntimeError, soundfile.LibsndfileError) as err:
        raise ValueError(f'Cannot read audio file {path!r} ({err}); expected a WAV/FLAC file.'
                         ) from err
    return resample_to_16k(to_mono(int16_to_float(samples)), sample_rate)


@functools.cache
def mel_matrix() -> np.ndarray:
    """VGGish mel weights [FFT_LENGTH // 2 + 1, 64] (mel_features.spectrogram_to_mel_matrix).

    Band i is a triangle over HTK-mel with edges at 64 + 2 evenly spaced mel points between
    125 and 7500 Hz: weight = max(0, min((m - lo) / (c - lo), (hi - m) / (hi - c))) where m is
    the mel value of an FFT bin's frequency; the DC bin gets weight 0.
    """
    bins_mel = librosa.hz_to_mel(np.linspace(0.0, SAMPLE_RATE / 2, FFT_LENGTH // 2 + 1), htk=True)
    edges = np.linspace(librosa.hz_to_mel(MEL_MIN_HZ, htk=True),
                        librosa.hz_to_mel(MEL_MAX_HZ, htk=True), NUM_MEL_BANDS + 2)
    lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (bins_mel[:, None] - lower) / (centre - lower)
    falling = (upper - bins_mel[:, None]) / (upper - centre)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights[0] = 0.0
    return weights


def log_mel_frames(waveform: np.ndarray) -> np.ndarray:
    """Mono 16 kHz float waveform [L >= 400] -> log-mel float32 [1 + (L - 400) // 160, 64]."""
    if waveform.ndim != 1 or waveform.shape[0] < WINDOW_LENGTH:
        raise ValueError(f'log_mel_frames expects a mono waveform of at least {WINDOW_LENGTH} '
                         f'samples, got shape {waveform.shape}.')
    padded = np.pad(waveform.astype(np.float64), _LIBROSA_WINDOW_OFFSET)
    magnitude = np.abs(librosa.stft(padded, n_fft=FFT_LENGTH, hop_length=HOP_LENGTH,
                                    win_length=WINDOW_LENGTH, window='hann', center=False))
    return np.log(magnitude.T @ mel_matrix() + LOG_OFFSET).astype(np.float32)


def log_mel_examples(waveform: np.ndarray, num_examples: int) -> np.ndarray:
    """Mono 16 kHz float waveform [L] -> VGGish input examples float32 [num_examples, 96, 64].

    Example n holds log-mel frames 96n .. 96n+95 (0.96 n s onwards). Missing examples (a short
    clip) are zeros, as torchvggish's `_preprocess` pads AVSBench's 5 s clips to 10; examples
    beyond `num_examples` are dropped.
    """
    if num_examples < 1:
        raise ValueError(f'num_examples must be >= 1, got {num_examples}.')
    if waveform.ndim != 1:
        raise ValueError(f'log_mel_examples expects a mono waveform [L], got shape '
                         f'{waveform.shape}; mix channels with to_mono first.')
    out = np.zeros((num_examples, EXAMPLE_FRAMES, NUM_MEL_BANDS), np.float32)
    if waveform.shape[0] < WINDOW_LENGTH:
        return out
    frames = log_mel_frames(waveform)
    count = min(num_examples, frames.shape[0] // EXAMPLE_FRAMES)
    out[:count] = frames[:count * EXAMPLE_FRAMES].reshape(count, EXAMPLE_FRAMES, NUM_MEL_BANDS)
    return out


@functools.cache
def _silent_examples(num_examples: int) -> np.ndarray:
    examples = log_mel_examples(np.zeros(num_examples * SAMPLE_RATE, np.float32), num_examples)
    examples.flags.writeable = False
    return examples


def silent_log_mel(num_examples: int) -> np.ndarray:
    """float32 [num_examples, 96, 64], read-only: `log_mel_examples` of an all-zero waveform of
    `num_examples` seconds (every example full), the model's "no sound" input (the CAVS
    problem's dropped audio, the audio-dependence probe's silence). Cached per count."""
    return _silent_examples(int(num_examples))
