"""recipes.data.forward_step under both of Megatron's schedules: the ordinary one calls it with
(data_iterator, model); the EP all-to-all overlap's combined 1F1B schedule calls it with
return_schedule_plan=True and needs the model's schedule plan back (a run with
dispatcher.overlap_moe_expert_parallel_comm=true died on the GPU host with "forward_step() got an
unexpected keyword argument 'return_schedule_plan'" before this)."""
from __future__ import annotations

import inspect
from types import SimpleNamespace

import pytest
import torch

from recipes import data


class FakeGPT:
    """Records which entry point the forward step used and with what."""

    def __init__(self):
        self.calls: list[tuple[str, tuple, dict]] = []

    def __call__(self, *args, **kwargs):
        self.calls.append(("forward", args, kwargs))
        return torch.tensor([[1.0, 2.0, 3.0, 4.0]])  # per-token losses

    def build_schedule_plan(self, *args, **kwargs):
        self.calls.append(("plan", args, kwargs))
        return "schedule plan"


@pytest.fixture
def batch(monkeypatch):
    b = {"tokens": torch.arange(4).view(1, 4), "position_ids": torch.arange(4).view(1, 4),
         "labels": torch.arange(1, 5).view(1, 4), "loss_mask": torch.tensor([[1.0, 1.0, 0.0, 1.0]])}
    monkeypatch.setattr(data, "next_batch", lambda it: b)
    monkeypatch.setattr(data, "get_args", lambda: SimpleNamespace(curr_iteration=0, rank=0))
    return b


def test_ordinary_schedule_runs_the_model(batch):
    model = FakeGPT()
    output, loss_func = data.forward_step(iter(()), model)
    assert [c[0] for c in model.calls] == ["forward"]
    assert model.calls[0][2]["labels"] is batch["labels"] and model.calls[0][2]["loss_mask"] is batch["loss_mask"]
    loss, tokens, logged = loss_func(output)
    assert loss.item() == 1.0 + 2.0 + 4.0 and tokens.item() == 3  # the masked token left out
    assert logged["lm loss"].tolist() == [7.0, 3.0]


def test_a2a_overlap_schedule_gets_the_schedule_plan(batch):
    """Called the way megatron/core/pipeline_parallel/combined_1f1b.py calls it."""
    model = FakeGPT()
    plan, loss_func = data.forward_step(iter(()), model, return_schedule_plan=True)
    assert plan == "schedule plan" and [c[0] for c in model.calls] == ["plan"]
    args, kwargs = model.calls[0][1], model.calls[0][2]
    assert args[0] is batch["tokens"] and args[1] is batch["position_ids"] and args[2] is None
    assert kwargs == {"labels": batch["labels"], "loss_mask": batch["loss_mask"]}
    assert callable(loss_func)


def test_megatron_calls_the_forward_step_with_the_keyword_we_accept():
    """The keyword megatron-core 0.19.2 passes is the one our signature has (guards a rename upstream)."""
    from megatron.core.pipeline_parallel import combined_1f1b

    assert "return_schedule_plan=True" in inspect.getsource(combined_1f1b)
    assert "return_schedule_plan" in inspect.signature(data.forward_step).parameters
