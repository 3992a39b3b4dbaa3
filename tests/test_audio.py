"""Tests of jax_cavs.data.audio against a direct numpy evaluation of VGGish's mel_features.

The reference below re-implements torchvggish's mel_features.py formulas (spec_cavs.md §2.5)
with plain numpy (strided framing, np.fft.rfft, its own HTK mel): it shares no code with the
module under test, which uses librosa's STFT.
"""

import chex
import numpy as np
import pytest
import soundfile

from jax_cavs.data import audio

SR = 16_000


def _reference_log_mel(waveform: np.ndarray) -> np.ndarray:
    """mel_features.log_mel_spectrogram with VGGish parameters, in float64. [frames, 64]."""
    window, hop, fft = 400, 160, 512
    num_frames = 1 + (len(waveform) - window) // hop
    frames = np.stack([waveform[i * hop:i * hop + window] for i in range(num_frames)])
    hann = 0.5 - 0.5 * np.cos(2 * np.pi / window * np.arange(window))  # periodic Hann
    magnitude = np.abs(np.fft.rfft(frames * hann, fft))
    to_mel = lambda hz: 1127.0 * np.log(1.0 + np.asarray(hz) / 700.0)  # noqa: E731
    bins_mel = to_mel(np.linspace(0.0, SR / 2, fft // 2 + 1))
    edges = np.linspace(to_mel(125.0), to_mel(7500.0), 64 + 2)
    weights = np.zeros((fft // 2 + 1, 64))
    for i in range(64):
        lower, centre, upper = edges[i:i + 3]
        weights[:, i] = np.maximum(0.0, np.minimum((bins_mel - lower) / (centre - lower),
                                                   (upper - bins_mel) / (upper - centre)))
    weights[0, :] = 0.0
    return np.log(magnitude @ weights + 0.01)


def _tone(seconds: float, freqs=(1000.0, 3000.0), sr: int = SR) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return sum(0.3 / (k + 1) * np.sin(2 * np.pi * f * t + k) for k, f in enumerate(freqs))


def test_log_mel_frames_match_numpy_vggish_reference():
    waveform = _tone(2.5).astype(np.float32)
    got = audio.log_mel_frames(waveform)
    want = _reference_log_mel(waveform.astype(np.float64))
    assert got.shape == (1 + (len(waveform) - 400) // 160, 64) == want.shape
    # Both sides are float64 FFTs of the same float32 samples; the only loss is the final cast
    # to float32 of values |x| < 10 (error < 1e-6) -> 1e-5 leaves a 10x margin.
    chex.assert_trees_all_close(got, want.astype(np.float32), rtol=1e-5, atol=1e-5)


def test_pure_tone_peaks_in_the_band_centred_nearest_its_frequency():
    got = audio.log_mel_frames(_tone(1.0, freqs=(1000.0,)).astype(np.float32)).mean(0)
    mel = lambda hz: 1127.0 * np.log(1.0 + hz / 700.0)  # noqa: E731
    centres_mel = np.linspace(mel(125.0), mel(7500.0), 66)[1:-1]
    centres_hz = 700.0 * (np.exp(centres_mel / 1127.0) - 1.0)
    assert np.argmax(got) == np.argmin(np.abs(centres_hz - 1000.0))


def test_examples_count_pad_and_truncate():
    waveform = _tone(5.0).astype(np.float32)
    frames = audio.log_mel_frames(waveform)
    assert frames.shape[0] == 498  # 1 + (80000 - 400) // 160, spec_cavs.md §2.5
    padded = audio.log_mel_examples(waveform, 10)
    assert padded.shape == (10, 96, 64) and padded.dtype == np.float32
    np.testing.assert_array_equal(padded[:5], frames[:480].reshape(5, 96, 64))
    np.testing.assert_array_equal(padded[5:], 0.0)
    np.testing.assert_array_equal(audio.log_mel_examples(waveform, 3), padded[:3])
    ten_seconds = audio.log_mel_examples(_tone(10.0).astype(np.float32), 10)
    assert np.all(ten_seconds != 0.0)  # 998 frames -> 10 full examples


def test_examples_of_too_short_audio_are_zero_and_bad_input_is_rejected():
    np.testing.assert_array_equal(audio.log_mel_examples(np.zeros(100, np.float32), 2), 0.0)
    with pytest.raises(ValueError, match='mono'):
        audio.log_mel_examples(np.zeros((16000, 2), np.float32), 1)
    with pytest.raises(ValueError, match='num_examples'):
        audio.log_mel_examples(np.zeros(16000, np.float32), 0)


def test_int16_to_float_and_to_mono():
    samples = np.array([-32768, 0, 16384, 32767], np.int16)
    np.testing.assert_array_equal(audio.int16_to_float(samples),
                                  np.array([-1.0, 0.0, 0.5, 32767 / 32768], np.float32))
    with pytest.raises(ValueError, match='int16'):
        audio.int16_to_float(samples.astype(np.int32))
    stereo = np.array([[1.0, 3.0], [-2.0, 0.0]], np.float32)
    np.testing.assert_array_equal(audio.to_mono(stereo), np.array([2.0, -1.0], np.float32))
    with pytest.raises(ValueError, match='channels'):
        audio.to_mono(np.zeros((2, 2, 2)))


def test_resample_keeps_the_frequency():
    waveform = _tone(1.0, freqs=(440.0,), sr=44_100).astype(np.float32)
    resampled = audio.resample_to_16k(waveform, 44_100)
    assert resampled.shape == (SR,)
    assert np.argmax(np.abs(np.fft.rfft(resampled))) == 440  # 1 Hz bins over one second
    np.testing.assert_array_equal(audio.resample_to_16k(resampled, SR), resampled)


def test_load_waveform_mixes_scales_and_resamples(tmp_path):
    left = np.round(_tone(1.0, freqs=(500.0,), sr=8000) * 32767).astype(np.int16)
    path = tmp_path / 'clip.wav'
    soundfile.write(path, np.stack([left, np.zeros_like(left)], axis=1), 8000, subtype='PCM_16')
    loaded = audio.load_waveform(str(path))
    assert loaded.shape == (SR,)
    # The mono mix halves the left channel's 0.3-amplitude tone.
    assert np.isclose(np.abs(np.fft.rfft(loaded))[500] * 2 / SR, 0.15, rtol=0.02)
    (tmp_path / 'broken.wav').write_bytes(b'not audio')
    with pytest.raises(ValueError, match='broken.wav'):
        audio.load_waveform(str(tmp_path / 'broken.wav'))


def test_silence_is_log_of_the_offset_not_zeros():
    """The log-mel of a silent waveform: log(0.01) in every bin of every (full) example; an
    all-zero log-mel, by contrast, is a mel energy of 0.99 in every band."""
    silence = audio.silent_log_mel(3)
    chex.assert_shape(silence, (3, audio.EXAMPLE_FRAMES, audio.NUM_MEL_BANDS))
    chex.assert_trees_all_equal(silence, np.full(silence.shape, np.log(np.float32(0.01))))
    assert not silence.flags.writeable
