import pytest

from ifss.errors import IfssError
from ifss.tasks import COCO_IDS, get_task, task_names

# research/pifs_mclos_mib.md §1.3
COCO_NOVEL = {
    0: [1, 5, 9, 14, 18, 22, 27, 33, 37, 41, 46, 50, 54, 58, 62, 67, 74, 78, 82, 87],
    1: [2, 6, 10, 15, 19, 23, 28, 34, 38, 42, 47, 51, 55, 59, 63, 70, 75, 79, 84, 88],
    2: [3, 7, 11, 16, 20, 24, 31, 35, 39, 43, 48, 52, 56, 60, 64, 72, 76, 80, 85, 89],
    3: [4, 8, 13, 17, 21, 25, 32, 36, 40, 44, 49, 53, 57, 61, 65, 73, 77, 81, 86, 90],
}


def test_coco_ids_exclude_unused():
    assert len(COCO_IDS) == 80
    assert not {12, 26, 29, 30, 45, 66, 68, 69, 71, 83, 91} & set(COCO_IDS)


@pytest.mark.parametrize("fold", range(4))
def test_coco_20i(fold):
    task = get_task("coco", f"20-{fold}")
    assert list(task.steps[1]) == COCO_NOVEL[fold]
    assert sorted(task.steps[0] + task.steps[1]) == list(COCO_IDS)
    multi = get_task("coco", f"20-{fold}m")
    assert multi.num_steps == 5
    assert [list(s) for s in multi.steps[1:]] == [COCO_NOVEL[fold][i:i + 5] for i in range(0, 20, 5)]


@pytest.mark.parametrize("fold", range(4))
def test_voc_5i(fold):
    novel = list(range(5 * fold + 1, 5 * fold + 6))
    task = get_task("voc", f"5-{fold}")
    assert list(task.steps[1]) == novel
    assert len(task.steps[0]) == 15 and not set(task.steps[0]) & set(novel)
    assert task.num_base == 16
    multi = get_task("voc", f"5-{fold}m")
    assert [list(s) for s in multi.steps[1:]] == [[c] for c in novel]


def test_voc_continual_tasks():
    assert get_task("voc", "15-5").steps == (tuple(range(1, 16)), tuple(range(16, 21)))
    assert get_task("voc", "15-1").num_steps == 6
    assert get_task("voc", "19-1").steps[1] == (20,)
    assert get_task("voc", "10-10").steps[1] == tuple(range(11, 21))
    assert get_task("voc", "10-1").num_steps == 11


def test_order_and_counts():
    task = get_task("synthetic", "5-1m")
    assert task.order(2) == (0, 1, 2, 3, 4, 5, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 6, 7)
    assert task.classes_per_step(2) == [16, 1, 1]
    assert task.class_names(1)[-1] == "bus"


def test_unknown_task_lists_valid_ones():
    with pytest.raises(IfssError, match=r"unknown task '5-9'.*valid tasks: offline, 5-0"):
        get_task("voc", "5-9")
    with pytest.raises(IfssError, match="unknown dataset"):
        get_task("cityscapes", "5-0")
    with pytest.raises(IfssError, match="steps 0..1"):
        get_task("voc", "5-0").check_step(2)
    assert "20-3m" in task_names("coco")
