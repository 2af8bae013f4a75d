"""CLIP image and caption features (EDITS step 2), stored raw: the authors cluster the raw projections.

As the authors' released code (einsteinxia/EDITS ``distillation/gen_prototype.py`` @ 9983f5a,
``CLIP_Image_Embeddings`` / ``CLIP_Text_Embeddings``, called from ``prototype_kmeans_ours``):

- image feature (``edits.clip_image_feature``): ``raw_cls`` (default) projects the vision tower's CLS
  token as it leaves the last layer, ``visual_projection(vision_model(px).last_hidden_state[:, 0])``;
  ``pooled`` is ``get_image_features`` (the CLS token after ``post_layernorm``, then projected). Their
  loader (``distillation/dataset_utils.py`` @ c856f34, ``load_dataset_ours``) resizes to 224 x 224
  (bilinear, no crop: ``edits.resize_mode`` squash, ``feature_resample`` bilinear, applied when the image
  is decoded); the processor's resize and crop are then identities and
  it only rescales and normalises with CLIP's mean and std, as theirs.
- text feature: ``get_text_features`` of the caption, truncated at 77 tokens. We pad every caption to
  77 tokens (theirs: to the batch's longest); CLIP's causal text tower reads the end-of-text token,
  which never attends to the padding after it, so the feature is the same and does not depend on the batch.

In transformers 5 ``get_image_features`` / ``get_text_features`` return a model output
whose ``pooler_output`` is the projected embedding; older versions return the tensor.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image

from actors.gpu_defaults import with_sdpa
from actors.loading import load_pretrained, pick_device, pick_dtype, set_torch_threads
from pipeline.core.faults import FaultInjector


def as_features(out: Any) -> torch.Tensor:
    """The projected embedding from a ``get_*_features`` result (``.pooler_output`` when present)."""
    if isinstance(out, torch.Tensor):
        return out
    pooled = getattr(out, "pooler_output", None)
    if pooled is not None:
        return pooled
    if isinstance(out, (tuple, list)):
        return out[0]
    raise TypeError(f"cannot find features in {type(out).__name__}")


IMAGE_FEATURES = ("raw_cls", "pooled")


class ClipEmbedder:
    """Ray Data actor: adds ``img_feat`` and ``txt_feat`` (float32 ``[B, D]``) and drops ``image``."""

    def __init__(self, model_ref: str, zoo_dir: str | None = None, dtype: str = "auto",
                 faults: dict | None = None, device: str | None = None, micro_batch: int | None = None,
                 image_feature: str = "raw_cls", torch_threads: int | None = None) -> None:
        # heavy: transformers (not loaded when this module is imported)
        from transformers import AutoProcessor, CLIPModel

        set_torch_threads(torch_threads)

        if image_feature not in IMAGE_FEATURES:
            from pipeline.errors import ConfigError

            raise ConfigError(f"edits.clip_image_feature must be one of {IMAGE_FEATURES}, got "
                              f"{image_feature!r}")
        self.image_feature = image_feature

        self.micro_batch = micro_batch  # fixed model batch: features do not depend on the Ray batch

        self.device = pick_device(device)
        self.dtype = pick_dtype(dtype, self.device)
        self.processor = load_pretrained("clip", model_ref, AutoProcessor.from_pretrained, zoo_dir)
        self.model = load_pretrained("clip", model_ref, with_sdpa(CLIPModel.from_pretrained), zoo_dir,
                                     dtype=self.dtype).to(self.device).eval()
        self.faults = FaultInjector.from_kwargs(faults)

    @torch.no_grad()
    def image_features(self, images: list[Image.Image]) -> np.ndarray:
        px = self.processor(images=images, return_tensors="pt")["pixel_values"].to(self.device, self.dtype)
        if self.image_feature == "pooled":
            return as_features(self.model.get_image_features(pixel_values=px)).float().cpu().numpy()
        cls = self.model.vision_model(pixel_values=px).last_hidden_state[:, 0]  # no post_layernorm
        return self.model.visual_projection(cls).float().cpu().numpy()

    @torch.no_grad()
    def text_features(self, texts: list[str]) -> np.ndarray:
        tok = self.processor.tokenizer(list(texts), padding="max_length", truncation=True,  # row-independent
                                       max_length=min(77,
                                                      self.model.config.text_config.max_position_embeddings),
                                       return_tensors="pt")
        tok = {k: v.to(self.device) for k, v in tok.items()}
        return as_features(self.model.get_text_features(**tok)).float().cpu().numpy()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        errors = np.asarray(batch.get("error", [""] * len(batch["path"])), dtype=object)
        ok = np.array([not e for e in errors], dtype=bool)
        dim = int(self.model.config.projection_dim)
        img = np.zeros((len(errors), dim), dtype=np.float32)
        txt = np.zeros((len(errors), dim), dtype=np.float32)
        if ok.any():
            idx = np.flatnonzero(ok)
            from pipeline.core.batching import run_fixed

            img[idx] = run_fixed(self.image_features,
                                 [[Image.fromarray(np.asarray(batch["image"][i], np.uint8)) for i in idx]],
                                 self.micro_batch)
            txt[idx] = run_fixed(self.text_features, [[str(batch["caption"][i]) for i in idx]],
                                 self.micro_batch)
        self.faults.maybe_fail(batch["path"])
        out = {k: v for k, v in batch.items() if k != "image"}
        out.update({"img_feat": img, "txt_feat": txt, "error": errors})
        return out
