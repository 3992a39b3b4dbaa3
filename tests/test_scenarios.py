"""Scenario construction on hand-made label sets (expected values derived by hand)."""

import numpy as np
import pytest

from jax_cavs.problems.cavs import scenarios

# 8 foreground classes (K = 9 outputs). Two obvious communities {1,2,3,4} and {5,6,7,8},
# with one weak cross edge (4-5) appearing once.
TRAIN = [[1], [1, 2], [2, 3], [3, 4], [1, 4], [2], [5], [5, 6], [6, 7], [7, 8], [5, 8],
         [8], [4, 5], [1, 2, 3], [6, 7, 8], [3]]
TEST = [[1], [2, 6], [7], [], [3, 4]]


def test_parse_split():
    assert scenarios.parse_split("60-10", 70) == (60, 10)
    assert scenarios.parse_split("60-5", 70) == (60, 5, 5)
    assert scenarios.parse_split("65-1", 70) == (65, 1, 1, 1, 1, 1)
    assert scenarios.parse_split("70-0", 70) == (70,)
    for bad in ("60-7", "80-10", "abc", "0-10", "60-0"):
        with pytest.raises(ValueError, match="scenario.split"):
            scenarios.parse_split(bad, 70)


def test_overlapped_sequential():
    sc = scenarios.build_scenario(TRAIN, TEST, 9, "6-2", mode="overlapped")
    assert sc.class_order == tuple(range(1, 9))
    assert [t.classes for t in sc.tasks] == [(1, 2, 3, 4, 5, 6), (7, 8)]
    # Task 0: any video with a class in 1..6: all but [7,8] (9) and [8] (11).
    np.testing.assert_array_equal(sc.tasks[0].train_indices,
                                  [0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 13, 14, 15])
    # Task 1: any video with 7 or 8.
    np.testing.assert_array_equal(sc.tasks[1].train_indices, [8, 9, 10, 11, 14])
    np.testing.assert_array_equal(sc.test_indices, [0, 1, 2, 3, 4])
    np.testing.assert_array_equal(sc.old_mask(1), [1, 1, 1, 1, 1, 1, 1, 0, 0])
    np.testing.assert_array_equal(sc.current_mask(1), [0, 0, 0, 0, 0, 0, 0, 1, 1])
    np.testing.assert_array_equal(sc.seen_mask(0), [1, 1, 1, 1, 1, 1, 1, 0, 0])


def test_disjoint_louvain_order_and_strict_filter():
    order = scenarios.louvain_class_order(TRAIN, 9, seed=0)
    assert order == (1, 2, 3, 4, 5, 6, 7, 8)
    sc = scenarios.build_scenario(TRAIN, TEST, 9, "4-4", mode="disjoint")
    assert [t.classes for t in sc.tasks] == [(1, 2, 3, 4), (5, 6, 7, 8)]
    # Strict: the video's classes all in the task -> the cross video [4,5] (12) is dropped.
    np.testing.assert_array_equal(sc.tasks[0].train_indices, [0, 1, 2, 3, 4, 5, 13, 15])
    np.testing.assert_array_equal(sc.tasks[1].train_indices, [6, 7, 8, 9, 10, 11, 14])
    mib = scenarios.build_scenario(TRAIN, TEST, 9, "4-4", mode="disjoint", disjoint_rule="mib")
    # MiB rule: no future classes -> [4,5] joins task 1 (4 is old) but not task 0.
    assert 12 not in mib.tasks[0].train_indices and 12 in mib.tasks[1].train_indices


def test_louvain_groups_a_shuffled_community_structure():
    # Communities {2,5,7} and {1,3,4,6,8}: the order follows communities, not indices.
    sets = [[2, 5], [5, 7], [2, 7], [2, 5, 7], [1, 3], [3, 4], [4, 6], [6, 8], [1, 8],
            [1, 4], [3, 6, 8]]
    order = scenarios.louvain_class_order(sets, 9, seed=0)
    assert set(order[:5]) == {1, 3, 4, 6, 8} and set(order[5:]) == {2, 5, 7}


def test_cis_cim_subsets():
    cis = scenarios.build_scenario(TRAIN, TEST, 9, "6-2", subset="cis")
    assert all(len(TRAIN[i]) == 1 for t in cis.tasks for i in t.train_indices)
    np.testing.assert_array_equal(cis.test_indices, [0, 2])
    cim = scenarios.build_scenario(TRAIN, TEST, 9, "6-2", subset="cim")
    assert all(len(TRAIN[i]) >= 2 for t in cim.tasks for i in t.train_indices)
    np.testing.assert_array_equal(cim.test_indices, [1, 4])


def test_joint_keeps_report_groups():
    sc = scenarios.build_scenario(TRAIN, TEST, 9, "6-2", joint=True)
    assert sc.num_tasks == 1 and sc.tasks[0].classes == tuple(range(1, 9))
    assert sc.report_groups == ((1, 2, 3, 4, 5, 6), (7, 8))
    np.testing.assert_array_equal(sc.group_mask(0), [1, 1, 1, 1, 1, 1, 1, 0, 0])


def test_empty_task_is_a_clear_error():
    with pytest.raises(ValueError, match="no training video"):
        scenarios.build_scenario([[1], [2]], [[1]], 4, "2-1", mode="disjoint")


def test_bad_fields_name_the_field():
    with pytest.raises(ValueError, match="scenario.mode"):
        scenarios.build_scenario(TRAIN, TEST, 9, "6-2", mode="sideways")
    with pytest.raises(ValueError, match="scenario.class_order"):
        scenarios.build_scenario(TRAIN, TEST, 9, "6-2", class_order=(1, 2, 3))
