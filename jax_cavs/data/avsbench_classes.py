"""AVSBench class lists and the class orders of the AVSBench-CI / CIS / CIM scenarios.

AVSBench-semantic has 70 sounding-object classes plus background (71 outputs). Its
``label2idx.json`` is 1-based with ``background: 1``; the training index is that minus one, so
background = 0 and the classes are 1..70 in alphabetical order (spec_cavs §1.2; AVSBench
``color_dataloader.py``, ``loss.py`` ``bg_idx = 0``). ``AVSS_CLASS_NAMES[i]`` is the name of
training index i.

CMR (Hong et al. 2025) splits these classes into tasks in index order ("classes are divided
sequentially", A.5.2). Its Table 7 lists the 60-10 *disjoint* tasks, obtained by Louvain
community detection; they are exactly the first 60 and the last 10 classes, i.e. the same sets
as the sequential order (spec_cavs §1.3), so ``CMR_60_10_ORDER`` is 1..70. For 60-5 and 65-1 the
disjoint order is unpublished and the sequential one is used as well (spec §1.3 DECISION);
``scenario_class_order`` returns it for every named split. Passing it as
``scenario.class_order`` keeps ``build_scenario`` from computing its own Louvain order in
disjoint mode, so overlapped and disjoint differ only by sample filtering, as in the paper.

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

