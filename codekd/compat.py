"""`--study-compat`: the settings that reproduce the study's code (BackOnTruck/kd-empirical, STUDY.md §4-5) for
one method and student kind, each of which is also an option of its own.

The study's code differs from codekd's defaults in ways that change results: it runs the teacher with dropout
on where it re-assembles the teacher from modules kept in a plain list (DIST, PKD and CKD with every student,
and every method with a BiGRU student; STUDY.md §4.5), pads every input to ``max_length`` (so batches are not
length-bucketed), runs its BiGRU over the pads and pools at the last padded position, keeps pads in CKD's
relations, and never clips gradients (§4.6). PKD's and CKD's label terms are combined as α·T²·soft CE +
(1 − α)·CE with α = 1 in both codebases, so they need no setting. The study seeds nothing; codekd keeps its
seed so that a compat run repeats exactly.
"""

from __future__ import annotations

from typing import Any

# Methods whose study code runs the teacher with dropout on, per student kind ("roberta" | "gru").
TEACHER_DROPOUT = {"kd": {"gru"}, "dist": {"roberta", "gru"}, "pkd": {"roberta", "gru"}, "ckd": {"roberta", "gru"}}


def study_settings(method: str, student_kind: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """`TrainConfig` fields and method options that make a `method` run with a `student_kind` student follow
    the study's code. Methods the study does not have (DKD, MiniLM, TinyBERT, combo) keep the teacher in eval
    mode and get the study's input and optimisation quirks only."""
    train = {"teacher_dropout": student_kind in TEACHER_DROPOUT.get(method, ()), "pad_to_max_length": True,
             "bucket": False, "gru_over_pads": student_kind == "gru", "max_grad_norm": 0.0,
             "teacher_precision": "fp32"}
    return train, {"study_padding": True} if method == "ckd" else {}
