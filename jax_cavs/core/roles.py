"""Parameter roles: named sets of parameters a problem declares (``Problem.param_roles``) and
methods refer to by name instead of by a model's paths.

A role is a tuple of regexes matched with ``re.search`` against a leaf's '/'-joined path
(``param_paths``: ``'decoder/output_conv_4/kernel'``). The core uses "frozen" (no optimiser
state, no update: ``core.optim``); strategies use "classifier" (MiB's balanced initialisation)
and "norm" / "classifier" (left free by the importance regularisers), and LRA-style methods
would *include* only "adapter" + "decoder". ``leaf_mask(params, include, exclude)`` turns
roles into a pytree of bools.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Mapping, Sequence

import jax

PyTree = Any
ROLE_NAMES = ("classifier", "norm", "frozen", "adapter", "decoder")


def _key_name(key) -> str:
    for attribute in ("key", "name", "idx"):
        if hasattr(key, attribute):
            return str(getattr(key, attribute))
    return str(key)


def param_paths(params: PyTree) -> PyTree:
    """Pytree of strings: each leaf's path joined with '/' (e.g. ``'decoder/head/kernel'``)."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: "/".join(_key_name(k) for k in path), params)


def compile_regexes(regexes: Sequence[str], field: str) -> tuple[re.Pattern, ...]:
    """The compiled ``regexes``; an invalid one is reported as a bad value of ``field``."""
    compiled = []
    for regex in regexes:
        try:
            compiled.append(re.compile(str(regex)))
        except re.error as error:
            raise ValueError(f"config field {field}: {regex!r} is not a valid regular "
                             f"expression ({error}).") from None
    return tuple(compiled)


def role_regexes(roles: Mapping[str, Sequence[str]], names: Sequence[str],
                 field: str) -> tuple[str, ...]:
    """The regexes of the roles ``names`` (concatenated); an unknown name lists the roles
    the problem declares."""
    unknown = [name for name in names if name not in roles]
    if unknown:
        raise ValueError(f"config field {field}: role(s) {unknown} not declared by the "
                         f"problem; declared roles: {sorted(roles)}.")
    return tuple(regex for name in names for regex in roles[name])


def leaf_mask(params: PyTree, include: Sequence[str] = (), exclude: Sequence[str] = ()
              ) -> PyTree:
    """Pytree of Python bools: True where a leaf's path matches one of ``include`` (every
    leaf when ``include`` is empty) and none of ``exclude``."""
    inc, exc = compile_regexes(include, "include"), compile_regexes(exclude, "exclude")

    def keep(path: str) -> bool:
        return ((not inc or any(p.search(path) for p in inc))
                and not any(p.search(path) for p in exc))

    return jax.tree_util.tree_map(keep, param_paths(params))


def matching(params: PyTree, regexes: Sequence[str]) -> dict[str, Any]:
    """``{path: leaf}`` of the leaves whose path matches one of ``regexes``."""
    patterns = compile_regexes(regexes, "role")
    paths = jax.tree_util.tree_leaves(param_paths(params))
    leaves = jax.tree_util.tree_leaves(params)
    return {path: leaf for path, leaf in zip(paths, leaves)
            if any(p.search(path) for p in patterns)}


def replace_leaves(params: PyTree, new: Mapping[str, Any]) -> PyTree:
    """``params`` with the leaves at the paths of ``new`` replaced (others are the same
    arrays)."""
    return jax.tree_util.tree_map(lambda path, leaf: new.get(path, leaf),
                                  param_paths(params), params)


def labeller(regexes: Sequence[str], inside: str, outside: str) -> Callable[[PyTree], PyTree]:
    """``params -> pytree of labels``: ``inside`` where a path matches ``regexes``, else
    ``outside`` (the ``param_labels`` of ``optax.multi_transform``)."""
    def labels(params: PyTree) -> PyTree:
        if not regexes:
            return jax.tree_util.tree_map(lambda _: outside, params)
        return jax.tree_util.tree_map(lambda keep: outside if keep else inside,
                                      leaf_mask(params, exclude=regexes))
    return labels
