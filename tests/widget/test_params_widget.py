"""The widget's parameter controls are made from the config fields: range, step, choices, default, label, help.

Nothing here copies a number from config.py: every expectation is read from the field's `Param` and default.
Run under a virtual display: `xvfb-run -a python -m pytest tests/test_params_widget.py`.
"""

from __future__ import annotations

import json

import pytest

from napari_tower.config import (
    FinetuneConfig,
    PredictConfig,
    PretrainConfig,
    PreviewConfig,
    PrototypeConfig,
    RetrainConfig,
)
from napari_tower.params import default_of, params

# Which field each parameter control of the widget edits (the controls the widget must have).
EXPECTED = {
    (PretrainConfig, "method"), (PretrainConfig, "steps"), (PretrainConfig, "data.patch"), (PretrainConfig, "batch"),
    (PretrainConfig, "data.patch_z"),
    (PretrainConfig, "model.base"), (PretrainConfig, "device"), (FinetuneConfig, "steps"), (FinetuneConfig, "minutes"), (FinetuneConfig, "instance_head"),
    (PredictConfig, "instances"), (PredictConfig, "probabilities"), (PredictConfig, "seed_threshold"), (PredictConfig, "tta"),
    (RetrainConfig, "steps"), (RetrainConfig, "minutes"),
    (RetrainConfig, "edit_weight"), (RetrainConfig, "lr_scale"),
    (RetrainConfig, "replay"), (PreviewConfig, "seed"), (PrototypeConfig, "k"), (PrototypeConfig, "ignore"),
}


def param_of(cls, path):
    return next(p for name, _, p in params(cls) if name == path)


def test_settings_of_the_older_flat_form_are_upgraded():
    from napari_tower.napari.settings import configs_from, to_settings, upgrade

    old = {"method": "simclr", "steps": 42, "patch": 64, "base": 8, "sparse": True, "edit_weight": 3.0,
           "prototype_k": 5, "scope": "whole stack", "last_dir": "/data", "someday": 1}
    new = upgrade(old)
    assert new["pretrain"] == {"method": "simclr", "steps": 42, "data": {"patch": 64}, "model": {"base": 8}}
    assert new["finetune"] == {"target": "sparse"} and new["scope"] == "whole stack" and "someday" not in new
    assert upgrade(new) == new
    configs = configs_from(old)
    assert configs["pretrain"].data.patch == 64 and configs["retrain"].edit_weight == 3.0
    assert configs["prototypes"].k == 5
    stored = to_settings({"retrain": RetrainConfig(steps=7)}, scope="current slice")
    assert json.loads(json.dumps(stored)) == stored and upgrade(stored) is stored
    assert configs_from({"version": 2, "retrain": {"steps": 7, "from_the_future": 1}})["retrain"].steps == 7
    assert configs_from({"version": 2, "retrain": "damaged"}) == {}


@pytest.mark.gui
def test_every_parameter_control_comes_from_its_config_field(make_napari_viewer):
    pytest.importorskip("napari")
    from magicgui.widgets import CheckBox, ComboBox

    from .test_widget import open_widget

    _, widget = open_widget(make_napari_viewer)
    sections = (widget.train, widget.preview, widget.segment, widget.correct, widget.prototypes)
    controls = [c for s in sections for c in s.parameter_controls()]
    assert {c.config_field for c in controls} == EXPECTED
    for control in controls:
        cls, path = control.config_field
        p, default = param_of(cls, path), default_of(cls, path)
        where = f"{cls.__name__}.{path}"
        assert control.value == default, where  # a fresh widget, no remembered settings
        assert control.tooltip.partition("\n")[0] == p.help, where  # a line on the 3D defaults may follow
        assert (control.text if isinstance(control, CheckBox) else control.label) == p.label, where
        if p.choices is not None:
            assert isinstance(control, ComboBox) and tuple(control.choices) == tuple(p.choices), where
        elif isinstance(default, bool):
            assert isinstance(control, CheckBox), where
        else:
            inside = (1 if isinstance(default, int) else p.step)
            assert control.min == p.min + (inside if p.min_open else 0), where
            assert control.max == p.max - (inside if p.max_open else 0), where
            assert control.step == (p.step or p.multiple_of or 1), where


@pytest.mark.gui
def test_remembered_settings_are_the_configs(make_napari_viewer, tmp_path):
    pytest.importorskip("napari")
    from napari_tower.config import from_dict
    from napari_tower.napari import settings
    from napari_tower.napari.widget import TowerWidget

    from .test_widget import open_widget

    viewer, widget = open_widget(make_napari_viewer)
    widget.correct.edit_weight.value = 2.5
    widget.segment.sparse.value = True
    widget.prototypes.k.value = 7
    widget.save_settings()
    stored = settings.load_settings()
    assert from_dict(RetrainConfig, stored["retrain"]).edit_weight == 2.5
    assert from_dict(FinetuneConfig, stored["finetune"]).target == "sparse"
    assert from_dict(PrototypeConfig, stored["prototypes"]).k == 7
    again = TowerWidget(viewer)
    assert again.correct.edit_weight.value == 2.5 and again.segment.sparse.value and again.prototypes.k.value == 7
    again.deleteLater()

    # An older flat file still works; values out of range or unknown are ignored, never an error.
    too_many = param_of(PrototypeConfig, "k").max + 1
    settings.settings_path().write_text(json.dumps({"steps": 12, "device": "quantum", "prototype_k": too_many,
                                                    "scope": "whole stack", "retired_option": 3}))
    old = TowerWidget(viewer)
    assert old.train.steps.value == 12 and old.segment.scope.currentText() == "whole stack"
    assert old.train.device.value == default_of(PretrainConfig, "device")
    assert old.prototypes.k.value == default_of(PrototypeConfig, "k")
    old.deleteLater()
