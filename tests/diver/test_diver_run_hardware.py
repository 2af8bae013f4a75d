"""DIVER's manifest names dtype-auto-on-GPU, channels_last and compile where they change bits."""

from __future__ import annotations

from pipeline.config import Config


def test_diver_manifest_names_the_hardware_settings_only_where_they_change_bits():
    from pipeline.diver.recovery import hardware_settings

    def hw(**over):
        models = {k: over.pop(k) for k in ("channels_last", "compile") if k in over}
        return hardware_settings(Config.model_validate({"models": models, "ray": over}))

    assert hw() == {}  # the CPU defaults: manifests written before these settings stay resumable
    assert hw(channels_last=True) == {"channels_last": True}
    assert hw(channels_last=False, compile=True) == {"compile": True}
    assert hw(actor_num_gpus=1) == {"device": "gpu:auto-bf16", "channels_last": True}
    assert hw(actor_num_gpus=1, channels_last=False) == {"device": "gpu:auto-bf16"}
