"""The SCI teacher: its targets order SID continuations by their best item's score, along the gold
prefix; the distillation term moves the model toward them and is refused without query vectors."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from sid_models.generative.distill import DistillationConfig, SciTeacher, distillation_loss
from sid_models.generative.vocab import EOS, SidVocab

# five items over two first-level codes; items 3 and 4 share the SID (1, 0)
SIDS = [(0, 0), (0, 1), (0, 1), (1, 0), (1, 0)]
VOCAB = SidVocab((2, 2))


def item_targets() -> np.ndarray:
    rows = np.zeros((len(SIDS), 3), dtype=np.int64)
    for row, sid in enumerate(SIDS):
        tokens = VOCAB.encode(sid)
        rows[row, :len(tokens)] = tokens
    return rows


def config(levels: int = 3, temperature: float = 1.0) -> DistillationConfig:
    return DistillationConfig.from_params({"weight": 1.0, "temperature": temperature, "levels": levels})


def test_targets_are_softmaxes_of_each_continuations_best_item_along_the_gold_prefix():
    # item i's vector e_i: the query's score of item i is its i-th coordinate
    teacher = SciTeacher(item_targets(), np.eye(5, dtype=np.float32), VOCAB.size, config())
    scores = torch.tensor([[0.0, 3.0, 1.0, 2.0, -1.0]])
    gold = torch.as_tensor(item_targets()[[1]])            # SID (0, 1)
    targets = teacher.targets(scores, gold, np.array([0]))[0]
    first = torch.softmax(torch.tensor([3.0, 2.0]), 0)    # level-0 code 0: best item 1 (3.0); code 1: item 3 (2.0)
    torch.testing.assert_close(targets[0, [VOCAB.token(0, 0), VOCAB.token(0, 1)]], first)
    second = torch.softmax(torch.tensor([0.0, 3.0]), 0)   # under code 0: (0, 0) holds item 0, (0, 1) items 1, 2
    torch.testing.assert_close(targets[1, [VOCAB.token(1, 0), VOCAB.token(1, 1)]], second)
    assert targets[2, EOS] == pytest.approx(1.0)          # every SID under (0, 1) ends there
    torch.testing.assert_close(targets.sum(dim=1), torch.ones(3))


def test_temperature_sharpens_and_levels_limit_the_positions():
    vectors = np.eye(5, dtype=np.float32)
    scores = torch.tensor([[0.0, 3.0, 1.0, 2.0, -1.0]])
    gold = torch.as_tensor(item_targets()[[3]])
    warm = SciTeacher(item_targets(), vectors, VOCAB.size, config(levels=1))
    cold = SciTeacher(item_targets(), vectors, VOCAB.size, config(levels=1, temperature=0.1))
    source = np.array([0])
    assert warm.targets(scores, gold, source).shape == (1, 1, VOCAB.size)
    top = VOCAB.token(0, 0)
    assert cold.targets(scores, gold, source)[0, 0, top] > warm.targets(scores, gold, source)[0, 0, top] > 0.5


def test_a_dropped_query_vector_gets_no_target():
    teacher = SciTeacher(item_targets(), np.eye(5, dtype=np.float32), VOCAB.size, config())
    targets = teacher.targets(torch.zeros(2, 5), torch.as_tensor(item_targets()[[0, 3]]), np.array([0, 1]))
    assert targets.abs().sum() == 0
    assert not teacher.first_scores                         # and nothing is kept for it


def test_a_sources_kept_first_position_scores_give_the_targets_a_fresh_teacher_computes():
    vectors = np.random.default_rng(0).standard_normal((5, 5)).astype(np.float32)
    queries = torch.from_numpy(np.random.default_rng(1).standard_normal((3, 5)).astype(np.float32))
    gold = torch.as_tensor(item_targets()[[1, 3, 0]])
    teacher = SciTeacher(item_targets(), vectors, VOCAB.size, config())
    first = teacher.targets(queries, gold, np.array([7, 8, 9]))
    assert sorted(teacher.first_scores) == [7, 8, 9]
    again = teacher.targets(queries[[2, 0]], gold[[0, 1]], np.array([9, 7]))     # kept scores, other gold SIDs
    fresh = SciTeacher(item_targets(), vectors, VOCAB.size, config()).targets(queries[[2, 0]], gold[[0, 1]],
                                                                              np.array([0, 1]))
    torch.testing.assert_close(again, fresh)
    torch.testing.assert_close(again[1, 0], first[0, 0])                   # source 7's first position


def test_the_loss_is_the_cross_entropy_to_the_targets_and_falls_as_the_model_matches_them():
    teacher = SciTeacher(item_targets(), np.eye(5, dtype=np.float32), VOCAB.size, config(levels=1))
    targets = teacher.targets(torch.tensor([[0.0, 3.0, 1.0, 2.0, -1.0]]), torch.as_tensor(item_targets()[[1]]),
                              np.array([0]))
    logits = torch.zeros(1, 3, VOCAB.size, requires_grad=True)
    expected = -(targets[0, 0] * torch.log_softmax(logits[0, 0], dim=-1)).sum()
    loss = distillation_loss(logits, targets)
    torch.testing.assert_close(loss, expected)
    loss.backward()
    with torch.no_grad():
        stepped = distillation_loss(logits - 1.0 * logits.grad, targets)
    assert stepped < loss
    assert logits.grad[0, 1:].abs().sum() == 0            # positions past `levels` are not taught


@pytest.mark.parametrize("section, match", [({"weight": -1.0, "temperature": 0.05, "levels": 1}, "weight"),
                                            ({"weight": 1.0, "temperature": 0.0, "levels": 1}, "temperature"),
                                            ({"weight": 1.0, "temperature": 0.05, "levels": 0}, "levels")])
def test_bad_settings_are_refused(section, match):
    with pytest.raises(ValueError, match=match):
        DistillationConfig.from_params(section)
