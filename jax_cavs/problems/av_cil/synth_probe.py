"""A linear probe of how much each modality of an AV-CIL release tells about the label.

``modality_probe(release)`` fits a multinomial logistic regression (numpy, full-batch
gradient descent on standardised features, no other dependency) on the train split and
reports top-1 accuracy on the test split for three inputs: the audio vector, the mean of the
visual tokens, and both concatenated. On ``synth_av_ci`` it checks that the data can show the
orderings of AV-CIL's Table 2 (audio-visual above audio-only and visual-only, both above
chance); ``tests/test_av_cil_synth.py`` asserts them.
"""

from __future__ import annotations

import numpy as np

from jax_cavs.problems.av_cil.release import FeatureSource, Release


def split_features(release: Release, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(audio [n, D_a], mean visual token [n, D_v], labels [n]) of one split."""
    source = FeatureSource(release, split)
    clips = [source[i] for i in range(len(source))]
    audio = np.stack([c["audio"] for c in clips])
    visual = np.stack([c["visual"].mean(0) for c in clips])
    return audio, visual, np.asarray(source.labels)


def logistic_regression(x: np.ndarray, y: np.ndarray, num_classes: int, steps: int = 300,
                        lr: float = 0.5, weight_decay: float = 1e-3):
    """Fits softmax regression on standardised ``x``; returns ``predict(x') -> labels``."""
    mean, std = x.mean(0), x.std(0) + 1e-6
    z = (x - mean) / std
    w, b = np.zeros((z.shape[1], num_classes)), np.zeros(num_classes)
    onehot = np.eye(num_classes)[y]
    for _ in range(steps):
        logits = z @ w + b
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        w -= lr * (z.T @ (p - onehot) / len(z) + weight_decay * w)
        b -= lr * (p - onehot).mean(0)
    return lambda x_new: (((x_new - mean) / std) @ w + b).argmax(1)


def modality_probe(release: Release, train: str = "train", test: str = "test",
                   **fit_kwargs) -> dict[str, float]:
    """Test accuracies of the probe on 'audio', 'visual', 'audio-visual', and 'chance'."""
    a_tr, v_tr, y_tr = split_features(release, train)
    a_te, v_te, y_te = split_features(release, test)
    k = len(release.class_names)
    inputs = {"audio": (a_tr, a_te), "visual": (v_tr, v_te),
              "audio-visual": (np.concatenate([a_tr, v_tr], 1), np.concatenate([a_te, v_te], 1))}
    out = {name: float(np.mean(logistic_regression(tr, y_tr, k, **fit_kwargs)(te) == y_te))
           for name, (tr, te) in inputs.items()}
    out["chance"] = float(np.max(np.bincount(y_te, minlength=k)) / len(y_te))
    return out
