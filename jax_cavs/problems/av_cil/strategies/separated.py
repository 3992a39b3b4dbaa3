"""The SS-IL machinery AV-CIL's methods share (Ahn et al. 2021, as AV-CIL's code runs it).

From the second task on, a batch is the current task's clips then exemplar clips
(``streams``), and the loss is

    L = L_SS-CE + L_TKD                      [AVCIL-code SSIL/train_incremental_ssil.py]

with the separated softmax (current clips over the current task's classes, exemplars over
the old ones) and the task-wise distillation from the previous task's best model over every
old task's classes at T = 2 (``losses.separated_ce``, ``losses.task_kd``). On the first task
it is plain CE over the task's classes (the separated softmax with no exemplar reduces to it).
After every task the class-balanced memory of ``exemplars`` is rebuilt (budget
``memory_size``, 0: none).

TKD needs the task of every class: ``extras["task_of_class"]`` (int32 [K], -1 = not seen)
is filled at each ``begin_task``.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from jax_cavs.cl import selection
from jax_cavs.core import strategy as base
from jax_cavs.problems.av_cil import exemplars, losses


@dataclasses.dataclass(frozen=True)
class SeparatedSoftmax(base.Strategy):
    """SS-CE + TKD with a class-balanced exemplar memory.

    Attributes:
      memory_size: |M|, the total exemplar budget (AVE 340, K-S 500, VS100 1500; 0: none).
      selection: how a finished task's classes fill their slots (``cl.selection``: "random"
        as the code's ``random.sample``, or "herding").
      temperature: T of the task-wise distillation (2).
    """

    uses_teacher = True

    memory_size: int = 340
    selection: str = "random"
    temperature: float = 2.0

    def __post_init__(self):
        if self.memory_size < 0:
            raise ValueError(f"config field strategy.memory_size={self.memory_size} must be "
                             f">= 0.")
        if self.selection not in selection.SELECTIONS:
            raise ValueError(f"config field strategy.selection={self.selection!r} is not one "
                             f"of {selection.SELECTIONS}.")

    def memory_capacity(self, num_classes: int) -> int:
        return self.memory_size

    def init_extras(self, num_classes: int):
        return {"task_of_class": jnp.full((num_classes,), -1, jnp.int32)}

    def begin_task(self, state, task):
        state = super().begin_task(state, task)
        owner = jnp.where(jnp.asarray(task.current), task.index, state.extras["task_of_class"])
        return state.replace(extras={**state.extras, "task_of_class": owner.astype(jnp.int32)})

    def separated_terms(self, state, batch, student, teacher) -> dict[str, jnp.ndarray]:
        """{"ce": SS-CE, "tkd": TKD (0 on the first task)}."""
        weights = batch["valid"]
        ce = losses.separated_ce(student.logits, batch["label"], batch["is_memory"],
                                 state.current, state.old, weights)
        tkd = losses.task_kd(student.logits, teacher.logits, state.extras["task_of_class"],
                             state.old, weights, self.temperature)
        return {"ce": ce, "tkd": jnp.where(state.task > 0, tkd, 0.0)}

    def loss(self, state, batch, student, teacher, rng):
        terms = self.separated_terms(state, batch, student, teacher)
        return terms["ce"] + terms["tkd"], terms

    def end_task(self, state, ctx):
        if not self.memory_size or ctx.task.index + 1 == ctx.task.num_tasks:
            return state
        return exemplars.update(state, ctx, self.memory_size, self.selection)
