"""The training pipeline's second process: the next-basket protocol runs beside the main run."""

from __future__ import annotations

import time

import pytest

from recsys.errors import InputError
from training.pipeline import ChildRun


def _doubled(x: int) -> int:
    return 2 * x


def _refused(x: int) -> int:
    raise InputError(f"bad value {x}; use another")


def _slow(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def test_a_child_run_returns_its_value_or_raises_its_error() -> None:
    assert ChildRun(_doubled, 21).result() == 42
    with pytest.raises(InputError, match="bad value 1; use another"):
        ChildRun(_refused, 1).result()


def test_a_child_run_is_daemonic_so_an_early_failure_never_waits_for_it() -> None:
    # recsys train starts the next-basket run first; if MLflow then fails, the command must end
    # at once, not after the child's minute of work
    run = ChildRun(_slow, 60.0)
    assert run._proc.daemon and run._proc.is_alive()
    run._proc.terminate()
    run._proc.join(5)
    with pytest.raises(RuntimeError, match="background process died"):
        run.result()


def test_protocol_params_change_only_what_the_model_has() -> None:
    from recsys.models import get_model
    from training.pipeline import protocol_params

    hybrid = get_model("hybrid").Params(label_days=14)
    nbr = protocol_params(hybrid, last_basket=True, audiences=False)
    assert (nbr.label_mode, nbr.audiences, nbr.label_days) == ("last_basket", False, 14)
    picks = protocol_params(hybrid, last_basket=False, audiences=False)
    assert (picks.label_mode, picks.audiences) == ("days", False)
    assert protocol_params(hybrid, last_basket=False, audiences=True) == hybrid
    als = get_model("als").Params(factors=8)
    assert protocol_params(als, last_basket=True, audiences=False) == als  # nothing of the kind to change
