"""The strategy protocol: a continual method is data (a frozen dataclass of hyper-parameters)
plus pure functions over the ``ContinualState`` (ARCHITECTURE.md).

The experiment loop is the same for every method and calls, per task::

    state = strategy.begin_task(state, task)          # masks, teacher snapshot, head init
    state = strategy.prepare_task(state, ctx)         # passes over the task data (PLOP, CSR)
    replay = strategy.replay_ids(state, ctx)          # memory videos mixed into the stream
    for batch in stream:                              # one jit'd step (``core.steps``)
        (every validation scores strategy.before_validation(state, ctx))
        loss, terms = strategy.loss(state, batch, student, teacher, rng)
        loss += strategy.penalty(params, state)
        ... optimiser ...
        state = strategy.after_step(state, grads, previous_params)
    for aux in strategy.aux_models(task):             # e.g. CMR's visual-only twin: trained
        ctx.aux[aux.name] = <aux.strategy on the stream>  # and checkpointed by the loop
    state = strategy.end_task(state, ctx)             # importance, memory selection

``loss``, ``penalty`` and ``after_step`` run inside jit; the others run on the host between
tasks and may call jit'd passes through ``ctx``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from jax_cavs.core.problem import Batch, Outputs, Problem  # noqa: F401 (re-exported)
from jax_cavs.core.state import ContinualState, copy_tree


@dataclasses.dataclass(frozen=True)
class TaskInfo:
    """Static description of the task about to be learned."""

    index: int
    num_tasks: int
    classes: tuple[int, ...]
    current: np.ndarray  # bool[K]
    old: np.ndarray      # bool[K]
    seen: np.ndarray     # bool[K]
    label_policy: str = "current"  # ``core.scenario.LABEL_POLICIES``


@dataclasses.dataclass
class TaskContext:
    """Host-side handles a strategy uses between tasks.

    Attributes:
      task: the task being learned.
      train_indices: record indices of the task's training videos (train split).
      batches: ``batches(indices, labels="current"|"seen") -> iterator`` of padded eval-mode
        host batches (``valid`` marks real clips) over training videos, labels remapped to
        the current task's classes or to all seen classes. With several processes every
        process gets the *whole* batches, so host-side selection sees every video.
      device_batch: host batch -> global device arrays laid out on the mesh.
      forward: jit'd eval-mode forward ``(params, batch_stats, host batch) -> Outputs``,
        replicated on every device (``np.asarray`` works on every process).
      problem: the run's ``core.problem.Problem``, for strategies that jit their own passes
        (gradients for EWC or MAS): ``ctx.problem.apply(variables, batch, train=False)``.
      workdir: run directory, for artefacts such as ``memory/task_<t>.json``.
      rng: a host-side ``np.random.Generator`` seeded from the config and the task.
      aux: name -> the trained auxiliary model (a ``ContinualState``) of every
        ``AuxModel`` the strategy declared for this task; filled before ``end_task``.

    Multi-process rules for strategies: run passes with ``core.hostpass`` (on every process;
    results in batch order), keep host-side choices deterministic (``rng``, ties to the
    earlier record), write files only on ``distributed.is_primary()``, and never run a
    computation on global arrays inside a process-0-only block.
    """

    task: TaskInfo
    train_indices: np.ndarray
    batches: Callable[..., Iterator[Batch]]
    device_batch: Callable[[Batch], Batch]
    forward: Callable[..., Outputs]
    problem: Problem
    workdir: str
    rng: np.random.Generator
    aux: dict[str, ContinualState] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class AuxModel:
    """A model a strategy needs beside the learner, trained by the loop on the task's stream
    after the learner's training, with the same items, epochs, batches and checkpoints
    (a kill during its training resumes bitwise), e.g. CMR's visual-only twin.

    Attributes:
      name: its key in ``TaskContext.aux`` and in the checkpoints.
      strategy: whose ``begin_task`` and loss train it.
      drop: modalities it does without (``core.problem.MODALITIES``); its teacher too.
      start: its initial weights: ``"teacher"`` (the learner at the end of the previous
        task, as the learner started this one) or ``"learner"`` (the learner now).
    """

    name: str
    strategy: Any
    drop: frozenset[str] = frozenset()
    start: str = "teacher"

    def __post_init__(self):
        if self.start not in ("teacher", "learner"):
            raise ValueError(f"AuxModel {self.name!r}: start={self.start!r} is not "
                             f"'teacher' or 'learner'.")


@dataclasses.dataclass(frozen=True)
class Strategy:
    """Base of every continual method; defaults implement plain fine-tuning hooks.

    ``problem`` is the run's ``core.problem.Problem`` (bound by ``get_strategy``): losses ask it
    for the supervised loss and the element weights, hooks for parameter roles and passes.
    It is not a hyper-parameter: it takes no part in equality or hashing.
    """

    problem: Any = dataclasses.field(default=None, compare=False, repr=False)

    name: ClassVar[str] = "base"
    uses_teacher: ClassVar[bool] = False      # the train step runs the frozen old model
    uses_importance: ClassVar[bool] = False   # allocate anchor / importance / path integral
    single_task: ClassVar[bool] = False       # train all classes at once (joint upper bound)
    # The first task's training as a function of the data alone: runs naming the same
    # objective can reuse one trained first task (``config.first_task_from``, MiB/PLOP's
    # ``--step_ckpt``). None where the first task leaves more than the learner behind (SI's
    # path integral) or is the whole run (joint).
    first_task_objective: ClassVar[str | None] = "ce"

    def init_extras(self, num_classes: int) -> dict[str, jnp.ndarray]:
        """Method-specific arrays kept in ``state.extras`` (static shapes)."""
        return {}

    def memory_capacity(self, num_classes: int) -> int:
        """Slots of the replay memory; 0 for methods without rehearsal."""
        return 0

    def begin_task(self, state: ContinualState, task: TaskInfo) -> ContinualState:
        """Sets the class masks and snapshots the teacher (the learner after task t-1)."""
        return state.replace(
            task=jnp.asarray(task.index, jnp.int32),
            current=jnp.asarray(task.current), old=jnp.asarray(task.old),
            seen=jnp.asarray(task.seen),
            old_params=copy_tree(state.params), old_batch_stats=copy_tree(state.batch_stats))

    def prepare_task(self, state: ContinualState, ctx: TaskContext) -> ContinualState:
        return state

    def replay_ids(self, state: ContinualState, ctx: TaskContext) -> np.ndarray:
        """Record indices of the memory videos mixed into this task's stream."""
        return state.memory.record_ids()

    def loss(self, state: ContinualState, batch: Batch, student: Outputs,
             teacher: Outputs | None, rng: jax.Array) -> tuple[jnp.ndarray, dict]:
        raise NotImplementedError(f"strategy {self.name!r} defines no loss")

    def penalty(self, params, state: ContinualState) -> jnp.ndarray:
        return jnp.zeros((), jnp.float32)

    def after_step(self, state: ContinualState, grads, previous_params) -> ContinualState:
        return state

    def before_validation(self, state: ContinualState, ctx: TaskContext) -> ContinualState:
        """The learner as the task would end at this point, scored by the validation and kept
        when best (e.g. iCaRL's class means of exemplars refreshed); training continues from
        the unchanged ``state``. Host-side, like ``end_task``."""
        return state

    def aux_models(self, task: TaskInfo) -> tuple[AuxModel, ...]:
        """The auxiliary models the loop trains for this task before ``end_task``."""
        return ()

    def end_task(self, state: ContinualState, ctx: TaskContext) -> ContinualState:
        return state


_REGISTRY: dict[str, type[Strategy]] = {}


def register(cls: type[Strategy]) -> type[Strategy]:
    """Class decorator adding a strategy to the registry under ``cls.name``."""
    if cls.name in _REGISTRY:
        raise ValueError(f"strategy name {cls.name!r} registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def available() -> list[str]:
    return sorted(_REGISTRY)


def strategy_class(name: str) -> type[Strategy]:
    """The registered class of strategy ``name``; an unknown name lists the valid ones."""
    if name not in _REGISTRY:
        raise ValueError(f"config field strategy.name={name!r} is not a known strategy; "
                         f"valid names: {', '.join(available())}.")
    return _REGISTRY[name]


def get_strategy(name: str, hparams: dict[str, Any] | None = None,
                 problem: Problem | None = None) -> Strategy:
    """Instantiates the strategy ``name`` with ``hparams``, bound to ``problem``; errors list
    the valid choices."""
    cls = strategy_class(name)
    fields = {f.name for f in dataclasses.fields(cls)} - {"problem"}
    hparams = dict(hparams or {})
    unknown = sorted(set(hparams) - fields)
    if unknown:
        raise ValueError(f"config fields strategy.{', strategy.'.join(unknown)} are not "
                         f"hyper-parameters of {name!r}; valid: {sorted(fields)}.")
    return cls(**hparams, problem=problem)
