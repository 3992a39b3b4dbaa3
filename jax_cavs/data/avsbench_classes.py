"""AVSBench class lists and the class orders of the AVSBench-CI / CIS / CIM scenarios.

AVSBench-semantic has 70 sounding-object classes plus background (71 outputs). Its
``label2idx.json`` is 1-based with ``background: 1``; the training index is that minus one, so
background = 0 and the classes are 1..70 in alphabetical order (spec_cavs §1.2; AVSBench
``color_dataloader.py``, ``loss.py`` ``bg_idx = 0``). ``AVSS_CLASS_NAMES[i]`` is the name of
training index i.

CMR (Hong et al. 2025) splits these classes into tasks in index order ("classes are divided
sequentially", A.5.2). Its Table 7 lists the 60-10 tasks: exactly the first 60 and the last 10
classes (new = ids 61-70, trombone..woman), i.e. the sequential order (spec_cavs §1.3), so
``CMR_60_10_ORDER`` is 1..70. For 60-5 and 65-1 no other order is published and the sequential
one is used as well (spec §1.3 DECISION); ``scenario_class_order`` returns it for every named
split, and it is the ``:avsbench`` setting's default (``scenario.class_order="sequential"``).

The authors' released code (GitHub cqu-student/CAVS-CMR at 661dfd8,
``avs_bench_public/tasks/get_tasks.py``; ``../shared/design/cmr_official_code.md`` §a) also
has fixed, hand-written orders; ``CMR_AUTHOR_ORDERS`` holds them under their names, per
AVSBench subset (their ``task_v2`` = CI = subset "all", ``task_v2s`` = CIS, ``task_v2m`` = CIM):

* ``60-10a`` (split 60-10; get_tasks.py:12-16, :60-64, :110-114): new classes 41, 70, 68, 13,
  26, 1, 5, 63, 9, 64 (man, woman, violin, cello, girl, accordion, bassoon, trumpet, boy, tuba).
* ``60-5a`` (split 60-5; :24-29, :72-77, :122-127): the same order in two steps of five.
* ``65-s1`` (split 65-1; :39-47, :87-95, :137-145): the same order, one class a step after the
  first 65; in CIS (``task_v2s``, :41, :45) classes 9 and 7 swap (7 is learned last but one).
* ``65-ss`` (split 65-1; :30-38, :78-86, :128-136): sequential (66..70) in CIS and CIM; in CI
  (``task_v2``) the new classes are 65, 51, 68, 64, 70.

Their code has no disjoint filter: a step trains on every video with a current class (our
``mode="overlapped"`` rule, on the metadata tokens; color_dataloader.py:139-151), so their
setting is ``mode="overlapped"`` with one of these orders. Within a task the order of classes
does not matter (tasks are sets); only which classes fall in which task does.

AVSBench-object S4 has 23 categories (spec_family C3); ``S4_CLASS_NAMES`` lists them in the
alphabetical order that ``data_pipelines/avsbench_object.py`` gives them (indices 1..23).
"""

from __future__ import annotations

AVSS_CLASS_NAMES = (
    'background',
    'accordion', 'airplane', 'axe', 'baby', 'bassoon', 'bell', 'bird', 'boat', 'boy', 'bus',
    'car', 'cat', 'cello', 'clarinet', 'clipper', 'clock', 'dog', 'donkey', 'drum', 'duck',
    'elephant', 'emergency-car', 'erhu', 'flute', 'frying-food', 'girl', 'goose', 'guitar', 'gun',
    'guzheng',
    'hair-dryer', 'handpan', 'harmonica', 'harp', 'helicopter', 'hen', 'horse', 'keyboard',
    'leopard', 'lion',
    'man', 'marimba', 'missile-rocket', 'motorcycle', 'mower', 'parrot', 'piano', 'pig', 'pipa',
    'saw',
    'saxophone', 'sheep', 'sitar', 'sorna', 'squirrel', 'tabla', 'tank', 'tiger', 'tractor',
    'train',
    'trombone', 'truck', 'trumpet', 'tuba', 'ukulele', 'utv', 'vacuum-cleaner', 'violin', 'wolf',
    'woman',
)
AVSS_NUM_CLASSES = len(AVSS_CLASS_NAMES)  # 71, background included

# CMR Table 7 (60-10): task 0 = indices 1..60 (accordion..train), task 1 = 61..70
# (trombone..woman) -- the sequential order.
CMR_60_10_ORDER = tuple(range(1, AVSS_NUM_CLASSES))
CMR_SPLITS = ('60-10', '60-5', '65-1')

# The authors' fixed orders (module docstring): the 60 classes of their first task, in their
# file's order (get_tasks.py:14, background dropped), then the 10 new ones (:15).
_AUTHOR_FIRST_60 = (
    10, 39, 43, 55, 28, 47, 19, 14, 24, 51, 17, 65, 56, 61, 53, 49, 33, 11, 31, 29, 15, 7, 62,
    50, 30, 34, 46, 27, 36, 20, 59, 48, 44, 8, 37, 40, 25, 12, 3, 18, 67, 66, 21, 45, 22, 16,
    38, 58, 57, 52, 69, 6, 35, 2, 60, 54, 42, 23, 32, 4)
_AUTHOR_NEW_10 = (41, 70, 68, 13, 26, 1, 5, 63, 9, 64)
_AUTHOR_A = _AUTHOR_FIRST_60 + _AUTHOR_NEW_10
_AUTHOR_A_CIS_SWAP = tuple({7: 9, 9: 7}.get(c, c) for c in _AUTHOR_A)  # task_v2s 65-s1
_CI_65_NEW = (65, 51, 68, 64, 70)  # task_v2 65-ss steps 1..5 (get_tasks.py:131-135)
_CI_65_SS = tuple(c for c in CMR_60_10_ORDER if c not in _CI_65_NEW) + _CI_65_NEW

# name -> (split, {subset: order of the 70 foreground classes}).
CMR_AUTHOR_ORDERS = {
    '60-10a': ('60-10', dict.fromkeys(('all', 'cis', 'cim'), _AUTHOR_A)),
    '60-5a': ('60-5', dict.fromkeys(('all', 'cis', 'cim'), _AUTHOR_A)),
    '65-s1': ('65-1', {'all': _AUTHOR_A, 'cis': _AUTHOR_A_CIS_SWAP, 'cim': _AUTHOR_A}),
    '65-ss': ('65-1', {'all': _CI_65_SS, 'cis': CMR_60_10_ORDER, 'cim': CMR_60_10_ORDER}),
}

S4_CLASS_NAMES = (
    'background',
    'ambulance_siren', 'baby_laughter', 'cap_gun_shooting', 'cat_meowing', 'chainsawing_trees',
    'coyote_howling', 'dog_barking', 'driving_buses', 'female_singing', 'helicopter',
    'horse_clip-clop', 'lawn_mowing', 'lions_roaring', 'male_speech', 'mynah_bird_singing',
    'playing_acoustic_guitar', 'playing_glockenspiel', 'playing_piano', 'playing_tabla',
    'playing_ukulele', 'playing_violin', 'race_car', 'typing_on_computer_keyboard',
)


def scenario_class_order(split: str) -> tuple[int, ...]:
    """The CMR class order of AVSBench-CI/CIS/CIM split ``split`` ('60-10', '60-5', '65-1').

    Returns the foreground training indices 1..70 in task order (module docstring), for
    ``config.scenario.class_order``.
    """
    if split not in CMR_SPLITS:
        raise ValueError(f'AVSBench-CI split {split!r} has no CMR class order; use one of '
                         f'{CMR_SPLITS} (or set scenario.class_order explicitly).')
    return CMR_60_10_ORDER



def author_class_order(name: str, split: str, subset: str) -> tuple[int, ...]:
    """The authors' fixed order ``name`` (``CMR_AUTHOR_ORDERS``) for ``subset``, checked to be
    an order of ``split``."""
    order_split, by_subset = CMR_AUTHOR_ORDERS[name]
    if split != order_split:
        raise ValueError(f'config field scenario.class_order={name!r} is an order of split '
                         f'{order_split!r}; set --config.scenario.split={order_split} (got '
                         f'{split!r}).')
    return by_subset[subset]
