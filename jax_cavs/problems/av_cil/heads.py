"""The classifier heads of AV-CIL's baselines beside the linear one: AFC's local similarity
classifier (LSC) and the nearest mean of exemplars (NME) of iCaRL and AFC.

**LSC** [AVCIL-code model/layers.py ``LSCLinear`` l. 98-115, ``stable_cosine_distance``
l. 7-35, ``reduce_proxies`` l. 37-45] (PODNet's local similarity classifier, Douillard et al.
2020): P = 10 proxies w_{c,p} per class, and with x̂ = x / ‖x‖, ŵ = w / ‖w‖::

    σ_{c,p} = −max(‖x̂‖² + ‖ŵ_{c,p}‖² − 2 x̂·ŵ_{c,p}, 0)      (minus the squared distance)
    s_c     = Σ_p softmax_p(σ_{c,·})_p σ_{c,p}                 (attention over the proxies)

The proxies are ``proxies`` [D, P, K] (class axis last, so the core leaves the rows of the
classes not seen yet at their initialisation, ``core.steps``), drawn N(0, 1/D) (torch's
``kaiming_normal_(nonlinearity="linear")`` on the [K·P, D] weight). ``factor`` is the
learnable scale η (initialised to 1) that AFC's NCA loss multiplies the similarities by
(``SplitLSCLinear.factor`` l. 128); the head returns it beside the scores. The code grows the
head per task (``SplitLSCLinear``: old proxies ``fc1``, new ones ``fc2``); here every class
has its proxies from the start and AFC's strategy freezes the old ones.

**NME** [AVCIL-code iCaRL/train_incremental_icarl.py ``classify`` l. 319-327]: the class
means μ_c (``class_means`` [K, D], filled on the host by the strategy from the exemplars,
never by the optimiser: the problem's "frozen" role) and the score
``−‖x̂ − μ_c‖₂``, whose argmax is the code's ``argmin`` of the distance. The means are
averages of normalised features and are not normalised again (the code's choice; iCaRL's
paper normalises them).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from jax_cavs.problems.av_cil.losses import l2_normalize

LSC_PROXIES = 10  # ``LSCLinear.K``


def lsc_similarities(features: jnp.ndarray, proxies: jnp.ndarray) -> jnp.ndarray:
    """s [B, K] of features [B, D] against proxies [D, P, K] (module docstring)."""
    x = l2_normalize(features)
    w = proxies / jnp.maximum(jnp.linalg.norm(proxies, axis=0, keepdims=True), 1e-12)
    squared = (jnp.sum(x * x, axis=-1)[:, None, None] + jnp.sum(w * w, axis=0)[None]
               - 2.0 * jnp.einsum("bd,dpk->bpk", x, w))
    # torch.clamp(min=0) then ``* (d > 0)``: the value and its gradient are 0 where d <= 0.
    similarity = -jnp.where(squared > 0, squared, 0.0)
    return jnp.sum(jax.nn.softmax(similarity, axis=1) * similarity, axis=1)


class LSCClassifier(nn.Module):
    """``x [B, D] -> (s [B, K], η)``: AFC's local similarity classifier."""

    num_classes: int
    proxies: int = LSC_PROXIES

    @nn.compact
    def __call__(self, features: jnp.ndarray):
        dim = features.shape[-1]
        weights = self.param("proxies", nn.initializers.normal(dim ** -0.5),
                             (dim, self.proxies, self.num_classes))
        factor = self.param("factor", nn.initializers.ones, ())
        return lsc_similarities(features, weights), factor


def nme_scores(features: jnp.ndarray, class_means: jnp.ndarray) -> jnp.ndarray:
    """``−‖x̂ − μ_c‖₂`` [B, K] of features [B, D] and class means [K, D]."""
    return -jnp.linalg.norm(l2_normalize(features)[:, None, :] - class_means[None], axis=-1)


class NearestMeanHead(nn.Module):
    """``x [B, D] -> NME scores [B, K]`` against the ``class_means`` the strategy keeps."""

    num_classes: int

    @nn.compact
    def __call__(self, features: jnp.ndarray) -> jnp.ndarray:
        means = self.param("class_means", nn.initializers.zeros,
                           (self.num_classes, features.shape[-1]))
        return nme_scores(features, means)
