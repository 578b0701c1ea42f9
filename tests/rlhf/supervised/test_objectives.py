"""The reward model's loss with the rating margin: by hand, and on the trainer's RM path."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from rlhf.supervised.examples import PairExample, TokenExample, pair_batch
from rlhf.supervised.objectives import bradley_terry_loss

pytestmark = pytest.mark.no_ray  # runs beside the `alone` tests in make test


def _neg_log_sigmoid(x: float) -> float:
    return math.log(1 + math.exp(-x))


def test_bradley_terry_margin_by_hand():
    # Llama-2: loss = -log sigmoid(r_c - r_r - m); a margin asks for a wider gap.
    chosen, rejected, margin = torch.tensor([2.0, 0.5]), torch.tensor([0.0, 1.0]), torch.tensor([1.0, 0.0])
    loss, acc = bradley_terry_loss(chosen, rejected, margin)
    expected = (_neg_log_sigmoid(2.0 - 0.0 - 1.0) + _neg_log_sigmoid(0.5 - 1.0 - 0.0)) / 2
    assert float(loss) == pytest.approx(expected)
    assert float(acc) == 0.5  # accuracy compares the raw scores, not the margin-shifted ones
    no_margin, _ = bradley_terry_loss(chosen, rejected)
    assert float(loss) > float(no_margin)  # a positive margin only raises the loss


class _FixedScores(torch.nn.Module):
    """Stands in for a scalar-head model: row i of the batch scores `scores[i]`."""

    def __init__(self, scores: list[float]):
        super().__init__()
        self.scores = torch.tensor(scores).unsqueeze(-1)  # [2B, 1]
        self.seen: dict = {}

    def forward(self, input_ids, attention_mask):
        self.seen = {"input_ids": input_ids, "attention_mask": attention_mask}
        return SimpleNamespace(logits=self.scores)


def _pair(margin: float) -> PairExample:
    return PairExample(TokenExample([1, 2, 3], [1, 2, 3]), TokenExample([1, 4], [1, 4]), margin)


def test_trainer_rm_loss_uses_the_pair_margin():
    from rlhf.supervised.trainer import rm_loss

    batch = pair_batch([_pair(1.5), _pair(0.0)], pad_id=0)
    model = _FixedScores([2.0, 0.5, 0.0, 1.0])  # chosen rows first, then rejected rows
    loss, stats = rm_loss(model, batch)
    expected = (_neg_log_sigmoid(2.0 - 0.0 - 1.5) + _neg_log_sigmoid(0.5 - 1.0 - 0.0)) / 2
    assert float(loss) == pytest.approx(expected)
    assert stats["accuracy"] == pytest.approx(0.5)
    assert stats["margin"] == pytest.approx(((2.0 - 0.0) + (0.5 - 1.0)) / 2)  # the score gap, as before
    assert model.seen["input_ids"].shape == (4, 3)


def test_trainer_rm_loss_without_margins_is_plain_bradley_terry():
    from rlhf.supervised.trainer import rm_loss

    batch = pair_batch([_pair(0.0)], pad_id=0)
    loss, _ = rm_loss(_FixedScores([1.0, -1.0]), batch)
    assert float(loss) == pytest.approx(_neg_log_sigmoid(2.0))
