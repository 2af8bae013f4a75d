"""The demo SD's check on EDITS's own path: img2img from EDITS's prototypes of train-split clusters.

As the method runs (METHODS.md, steps 2-8, with the authors' released settings): per class, CLIP image
features and the class's caption features are fused by GSQ (``concat`` of the raw projections,
tau 0.01), clustered by sklearn ``KMeans(n_clusters=ipc, random_state=seed, n_init=10)``, and LSA
takes the 5 members nearest each centre; the image prototype is the mean VAE latent
(``latent_dist.mode() * scaling_factor``) of those 5, the text prototype SmolLM2's summary of their
captions with the pipeline's own prompt (``pipeline.edits.prompts``), or the class-name prompt
(``edits.class_prompt``). The images come from ``actors.sd.img2img`` at EDITS's defaults
(strength 0.7, CFG 10, the negative prompt, 50 DDIM steps); a ConvNet trained on the real train
digits judges them. The captions are the ones the demo captioner is trained to write
(``a photo of <class name>, <measured attributes>``).

The SmolLM2 prototypes are written once (``write_check_texts``, minutes on a CPU) and cached in
``sd_summaries.json`` with the members they summarise, so the check reruns without the LLM.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from pipeline.demo.zoo.captions import captions_for
from pipeline.edits import prompts
from pipeline.edits.gsq import gsq_fuse
from pipeline.edits.lsa import select

SUMMARIES_NAME = "pipeline/demo/zoo/sd_summaries.json"
CAPTION_LEAD = "a photo of {class_name},"  # the demo captioner's prefix (prompts.CAPTION_PREFIX)
CLASS_PROMPT = "a photo of {class_name}"  # edits.class_prompt's default


@dataclass
class Cluster:
    label: int
    cluster: int
    members: list[int]  # train indices of the k nearest members (image and text prototype)


def clusters_of(d: Any, clip_dir: str, ipc: int, seed: int = 0, k: int = 5,
                tau: float = 0.01) -> list[Cluster]:
    """EDITS's clusters of every train class: GSQ concat of raw CLIP projections, KMeans, LSA's ``k``
    nearest."""
    from sklearn.cluster import KMeans

    from actors.clip_embedder import ClipEmbedder
    emb = ClipEmbedder(clip_dir, device="cpu", dtype="float32")
    img = emb.image_features([Image.fromarray(im) for im in d.train_images])
    txt = emb.text_features(captions_for(d.train_images, d.train_labels, d.names, CAPTION_LEAD))
    out = []
    for c in range(len(d.names)):
        idx = np.flatnonzero(d.train_labels == c)
        fused = gsq_fuse(img[idx], txt[idx], tau=tau, fusion="concat", normalize=False)
        km = KMeans(n_clusters=ipc, random_state=seed, n_init=10).fit(fused)
        for sel in select(fused, km.labels_, km.cluster_centers_, k, k):
            out.append(Cluster(label=c, cluster=sel.cluster,
                               members=[int(idx[i]) for i in sel.image_members]))
    return out


@torch.no_grad()
def image_prototypes(vae: Any, d: Any, clusters: list[Cluster]) -> torch.Tensor:
    """The mean scaled latent of each cluster's members ``[n, C, h, w]``."""
    x = torch.from_numpy(d.train_images).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    protos = [vae.encode(x[cl.members]).latent_dist.mode().mean(0) * vae.config.scaling_factor
              for cl in clusters]
    return torch.stack(protos)


def cluster_key(ipc: int, cl: Cluster) -> str:
    return f"ipc{ipc}/{cl.label}/{cl.cluster}"


def smollm2_summariser(d: Any, sd_dir: str,
                       llm: str = "zoo:smollm2") -> Callable[[list[list[int]]], list[str]]:
    """SmolLM2, loaded once: groups of train indices -> one text prototype each, as the prototype stage writes
    it (``sd_text.llm_summaries`` over the captions the demo captioner is trained to write)."""
    from transformers import AutoTokenizer

    from actors.llm import TransformersChat
    from pipeline.demo.zoo import sd_text

    chat = TransformersChat(llm, dtype="float32", device="cpu")
    tok = AutoTokenizer.from_pretrained(sd_dir, subfolder="tokenizer")
    captions = captions_for(d.train_images, d.train_labels, d.names, CAPTION_LEAD)
    return lambda groups: sd_text.llm_summaries(groups, captions, d.names, d.train_labels, chat, tok)


def write_check_texts(d: Any, clip_dir: str, ipcs: tuple[int, ...],
                      summarise: Callable[[list[list[int]]], list[str]], seed: int = 0,
                      log: Any = print) -> dict[str, dict[str, Any]]:
    """SmolLM2's text prototype of every check cluster (key -> members, text)."""
    out: dict[str, dict[str, Any]] = {}
    for ipc in ipcs:
        cls = clusters_of(d, clip_dir, ipc, seed)
        texts = summarise([cl.members for cl in cls])
        for cl, text in zip(cls, texts):
            out[cluster_key(ipc, cl)] = {"members": cl.members, "text": text}
        log(f"  SmolLM2 prototypes of the IPC {ipc} clusters: {len(cls)}, e.g. {texts[0]!r}")
    return out


def _cached_text(texts: dict[str, dict[str, Any]], ipc: int, cl: Cluster) -> str:
    key = cluster_key(ipc, cl)
    if key not in texts or texts[key]["members"] != cl.members:
        raise KeyError(f"{SUMMARIES_NAME} has no SmolLM2 prototype of cluster {key} with members "
                       f"{cl.members} (the demo CLIP or data changed?); rewrite it with "
                       "pipeline.demo.zoo.sd_check.write_summaries_file")
    return texts[key]["text"]


def check_img2img(model_dir: str, d: Any, clip_dir: str, ipcs: tuple[int, ...],
                  texts: dict[str, dict[str, Any]],
                  net: Any, seed: int = 0, prompt: str = "llm",
                  skip_uncached: bool = False) -> dict[str, Any]:
    """Share of EDITS img2img images recognised as their cluster's class (overall, per class, per IPC).

    ``skip_uncached``: with ``prompt="llm"``, leave out the clusters ``texts`` has no prototype of
    (``checked`` says how many each IPC kept) instead of raising.
    """
    from actors.sd import GenerateSettings, img2img, load_img2img_pipeline
    from pipeline.core.seeds import image_seed
    from pipeline.demo.zoo.dit import classify

    pipe = load_img2img_pipeline(model_dir, device="cpu", dtype="float32")
    settings = GenerateSettings()
    labels, images, by_ipc, checked = [], [], {}, {}
    for ipc in ipcs:
        cls = clusters_of(d, clip_dir, ipc, seed)
        if prompt == "llm" and skip_uncached:
            cls = [cl for cl in cls if cluster_key(ipc, cl) in texts]
        checked[ipc] = len(cls)
        if not cls:
            continue
        latents = image_prototypes(pipe.vae, d, cls)
        if prompt == "llm":
            ps = [_cached_text(texts, ipc, cl) for cl in cls]
        else:
            ps = [prompts.class_prompt(d.names[cl.label], CLASS_PROMPT) for cl in cls]
        seeds = [image_seed(seed, str(cl.label), cl.cluster) for cl in cls]
        ims = []
        for i in range(0, len(cls), 10):
            ims += img2img(pipe, latents[i:i + 10], ps[i:i + 10], seeds[i:i + 10], settings)
        lab = torch.tensor([cl.label for cl in cls])
        x = torch.from_numpy(np.stack(ims)).permute(0, 3, 1, 2).float() / 255
        pred = classify(net, x)
        by_ipc[ipc] = round(float((pred == lab).float().mean()), 4)
        labels.append(lab)
        images.append(x)
    lab, x = torch.cat(labels), torch.cat(images)
    pred = classify(net, x)
    per_class = {d.names[c]: round(float((pred[lab == c] == c).float().mean()),
                                   4) for c in range(len(d.names))}
    return {"accuracy": round(float((pred == lab).float().mean()), 4), "per_ipc": by_ipc,
            "per_class": per_class, "checked": checked, "images": x, "labels": lab}


def write_summaries_file(d: Any, clip_dir: str, sd_dir: str, ipcs: tuple[int, ...] = (1, 10), seed: int = 0,
                         train_groups_per_class: int = 20, llm: str = "zoo:smollm2", log: Any = print,
                         path: Path | None = None) -> None:
    """Write ``sd_summaries.json`` (or ``path``): SmolLM2 prototypes of the check clusters and of
    ``train_groups_per_class`` random groups of 5 train images of each class (the demo SD's text stage; the
    shipped file: 20)."""
    import json

    from pipeline.demo.zoo import sd_text

    summarise = smollm2_summariser(d, sd_dir, llm)
    check = write_check_texts(d, clip_dir, ipcs, summarise, seed, log)
    groups = sd_text.summary_groups(d.train_labels, train_groups_per_class, 5, seed + 100)
    train = [{"members": g, "text": t} for g, t in zip(groups, summarise(groups))]
    (path or sd_text.SUMMARIES_FILE).write_text(json.dumps(
        {"llm": llm, "prompt": "pipeline.edits.prompts.summary_messages (greedy, 77 tokens), cleaned by "
                               "prompts.clean_generated", "seed": seed,
         "train_fingerprint": sd_text.train_fingerprint(d.train_images, d.train_labels),
         "check": check, "summaries": train}, indent=1))
