"""Zoo models continued from another (`pretrain.init_from`): a long-context stage on top of a trained model.

A continued model must start from its parent's trained weights (not a random init), be trained
after its parent, and count as stale when its parent's config changes, so the main job never
pairs a continued model with a parent it was not trained from.
"""

from __future__ import annotations

import copy

import pytest
import torch

from laid.zoo.cli import _is_complete, build_zoo, zoo_configs
from laid.zoo.configs import load_zoo_config

from zoo_helpers import ZOO_CONFIGS


def _pair(tmp_path, child_lr: float = 0.0):
    """A tiny parent (tiny-3b's architecture, a few steps) and a child continued from it."""
    parent = load_zoo_config(ZOO_CONFIGS / "tiny-3b.yaml")
    parent.name = "parent"
    p = parent.pretrain
    p.steps, p.vision_steps, p.image_bank_size, p.warmup_steps = 4, 3, 40, 1
    child = copy.deepcopy(parent)
    child.name, child.role = "child", "teacher"
    c = child.pretrain
    c.init_from, c.vision_steps, c.steps, c.lr, c.seed, c.max_haystack = "parent", 0, 3, child_lr, 7, 8
    return parent, child


def _weights(folder):
    from laid.model.loading import load_model

    return {k: v.clone() for k, v in load_model(folder, device="cpu", dtype=torch.float32).state_dict().items()}


def test_a_continued_model_starts_from_its_parent_and_is_trained_after_it(tmp_path):
    parent, child = _pair(tmp_path)  # child learning rate 0: its weights must stay the parent's
    # Listed child first: the parent must still be trained first (the child loads its folder).
    folders = build_zoo(tmp_path / "zoo", [child, parent], workers=1, progress=False)
    got, want = _weights(folders["child"]), _weights(folders["parent"])
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)
    # The ablation: the same child from a random init (init_from "") is not its parent.
    orphan = copy.deepcopy(child)
    orphan.name, orphan.pretrain.init_from, orphan.pretrain.vision_steps = "orphan", "", 3
    alone = _weights(build_zoo(tmp_path / "zoo", [orphan], workers=1, progress=False)["orphan"])
    assert not all(torch.equal(alone[k], want[k]) for k in want)


def test_a_changed_parent_config_makes_the_child_stale(tmp_path, monkeypatch):
    from laid.zoo import cli

    parent, child = _pair(tmp_path, child_lr=1e-3)
    out = tmp_path / "zoo"
    build_zoo(out, [parent, child], workers=1, progress=False)
    assert _is_complete(out / "child", child, parent=parent)
    assert not _is_complete(out / "child", child)  # without the parent the lineage cannot be checked
    changed = copy.deepcopy(parent)
    changed.pretrain.steps += 1
    assert not _is_complete(out / "child", child, parent=changed)
    trained = []
    monkeypatch.setattr(cli, "build_one", lambda c, folder, *a, **k: trained.append(c.name))
    build_zoo(tmp_path / "again", [changed, child], workers=1, progress=False, checkpoints=out)
    assert trained == ["parent", "child"]  # nothing copied: the child was trained from the old parent
    trained.clear()
    build_zoo(tmp_path / "copied", [parent, child], workers=1, progress=False, checkpoints=out)
    assert trained == []  # both match the shipped folders: copied


def test_zoo_configs_adds_the_parent_first_and_refuses_a_loop(tmp_path):
    import yaml

    src = yaml.safe_load((ZOO_CONFIGS / "tiny-3b.yaml").read_text())
    for name, parent in (("a", ""), ("b", "a"), ("x", "y"), ("y", "x")):
        d = copy.deepcopy(src)
        d["name"], d["pretrain"]["init_from"] = name, parent
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(d))
    assert [c.name for c in zoo_configs(tmp_path, ["b"])] == ["a", "b"]
    with pytest.raises(ValueError, match="loop: x -> y -> x"):
        zoo_configs(tmp_path, ["x"])


def test_a_child_needs_its_parent_and_its_architecture(tmp_path):
    parent, child = _pair(tmp_path)
    with pytest.raises(ValueError, match="continues from parent: build them together") as e:
        build_zoo(tmp_path / "zoo", [child], workers=1, progress=False)
    assert "\n" not in str(e.value)
    wider = copy.deepcopy(child)
    wider.text.intermediate_size *= 2
    with pytest.raises(ValueError, match="text/vision/image_size sections differ") as e:
        build_zoo(tmp_path / "zoo", [parent, wider], workers=1, progress=False)
    assert "\n" not in str(e.value)


def test_a_model_from_a_random_init_keeps_its_config_dict():
    """The shipped folders were matched on the config dict before init_from existed."""
    cfg = load_zoo_config(ZOO_CONFIGS / "tiny-32b.yaml")
    assert "init_from" not in cfg.to_dict()["pretrain"]
    cfg.pretrain.init_from = "tiny-3b"
    assert cfg.to_dict()["pretrain"]["init_from"] == "tiny-3b"
