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


def test_named_class_orders_and_their_errors():
    # "sequential" in disjoint mode: index order, strict filter as before.
    sc = scenarios.build_scenario(TRAIN, TEST, 9, "6-2", mode="disjoint", class_order="sequential")
    assert [t.classes for t in sc.tasks] == [(1, 2, 3, 4, 5, 6), (7, 8)]
    # "louvain" in overlapped mode = the disjoint default's order (1..8 here, see above).
    lv = scenarios.build_scenario(TRAIN, TEST, 9, "4-4", class_order="louvain")
    assert lv.class_order == scenarios.louvain_class_order(TRAIN, 9, seed=0)
    # Empty = the mode's default; a list is an explicit order.
    assert scenarios.build_scenario(TRAIN, TEST, 9, "6-2", class_order=()).class_order == \
        tuple(range(1, 9))
    explicit = scenarios.build_scenario(TRAIN, TEST, 9, "6-2", class_order=[8, 7, 1, 2, 3, 4, 5, 6])
    assert [t.classes for t in explicit.tasks] == [(1, 2, 3, 4, 7, 8), (5, 6)]
    with pytest.raises(ValueError, match=r"scenario.class_order='zigzag' is not one of "
                                         r"\('sequential', 'louvain', '60-10a'"):
        scenarios.build_scenario(TRAIN, TEST, 9, "6-2", class_order="zigzag")
    with pytest.raises(ValueError, match="AVSBench-semantic order of 70 classes"):
        scenarios.build_scenario(TRAIN, TEST, 9, "6-2", class_order="60-10a")


# One video per class: every task keeps the videos of its own classes, whatever the order.
AVSS_TRAIN = [[c] for c in range(1, 71)]
# CMR authors' avs_bench_public/tasks/get_tasks.py (cqu-student/CAVS-CMR @ 661dfd8), the new
# classes of every step, written out from lines 15, 27-28, 42-46, 131-135 and 140-144.
AUTHOR_60_10A_NEW = {41, 70, 68, 13, 26, 1, 5, 63, 9, 64}


def _avss(split, order, subset="all"):
    # CIM keeps only multi-source videos: pair every class with the next one.
    train = [[c, c % 70 + 1] for c in range(1, 71)] if subset == "cim" else AVSS_TRAIN
    sc = scenarios.build_scenario(train, [[1]], 71, split, mode="overlapped",
                                  subset=subset, class_order=order)
    return [set(t.classes) for t in sc.tasks]


def test_cmr_author_orders_match_their_files():
    first_60 = set(range(1, 71)) - AUTHOR_60_10A_NEW
    assert _avss("60-10", "60-10a") == [first_60, AUTHOR_60_10A_NEW]
    assert _avss("60-5", "60-5a") == [first_60, {41, 70, 68, 13, 26}, {1, 5, 63, 9, 64}]
    first_65 = first_60 | {41, 70, 68, 13, 26}
    assert _avss("65-1", "65-s1") == [first_65, {1}, {5}, {63}, {9}, {64}]
    assert _avss("65-1", "65-s1", "cim") == [first_65, {1}, {5}, {63}, {9}, {64}]
    # task_v2s (CIS): 9 in the first task, 7 fourth (get_tasks.py:41, :45).
    assert _avss("65-1", "65-s1", "cis") == [first_65 - {7} | {9}, {1}, {5}, {63}, {7}, {64}]
    # task_v2 (CI) 65-ss: 65, 51, 68, 64, 70; v2s / v2m: 66..70.
    assert _avss("65-1", "65-ss") == [set(range(1, 71)) - {65, 51, 68, 64, 70},
                                      {65}, {51}, {68}, {64}, {70}]
    for subset in ("cis", "cim"):
        assert _avss("65-1", "65-ss", subset) == [set(range(1, 66)), {66}, {67}, {68}, {69},
                                                  {70}]
    assert _avss("60-10", "sequential") == [set(range(1, 61)), set(range(61, 71))]
    with pytest.raises(ValueError, match="order of split '60-10'.*scenario.split=60-10"):
        _avss("60-5", "60-10a")
