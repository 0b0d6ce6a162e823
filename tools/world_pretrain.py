"""Builder of the world model's weights: contrastive pretraining on a captioned corpus.

This is a development tool, not part of the runtime library: it produces the file
``fdalign_plugins/world/weights/fdalign-world-tiny.safetensors`` that the package ships.

The corpus covers every class in every style (the sketch family included, but rarer:
real CLIP has seen some sketches, far fewer than photos), under the broad
:data:`PRETRAIN_NUISANCE`, with context independent of class. It is drawn from its own
random stream, so it never shares an image with the benchmark splits. Each image gets a
fresh caption every time it is seen:

* photo-family styles: with probability ``neutral_prob`` a neutral photo template
  ("a photo of a {}.", "itap of my {}.", ...), otherwise one of the style's own
  templates ("a dark photo of the {}.");
* art and sketch styles: with probability ``bare_prob`` the bare class name
  ("a {}."), otherwise one of the style's templates ("a sketch of a {}.");
* imperfect alt-text, one way: a caption of the *first* class of each
  :data:`CONFUSABLE_PAIRS` pair names the second with probability ``caption_swap``
  (``swap_direction="first"``), never the reverse. The images of the first class are
  then pulled towards both names, while the two names keep distinct meanings, as with
  real CLIP, whose prototypes of confusable classes differ and whose image features mix
  them up. A swap in both directions (``"both"``, world v2's first model) makes the two
  names interchangeable: their prototypes coincided (cosine 0.999), so no encoder
  fine-tuned against them could tell the pair apart.

Text goes through :class:`~fdalign_plugins.world.tokenizer.WorldTokenizer`: CLIP's BPE,
one embedding row per token the world uses.

Every caption names a class, so zero-shot classification works; the style phrases of
CLIP's 80 templates are grounded in the rendering styles, so the frozen model's
spurious distribution over the 80 templates carries the style of an image. The
temperature is fixed at CLIP's final value (``logit_scale`` 100) rather than learned.

Reproduce the shipped weights (fixed seed, CPU, one thread)::

    python tools/world_pretrain.py --out fdalign_plugins/world/weights --seed 0
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fdalign_plugins.prompts import IMAGENET_TEMPLATES, class_prototypes, encode_prompts, normalise
from fdalign_plugins.world.generator import (
    BARE_TEMPLATES,
    CLASSNAMES,
    CONFUSABLE_PAIRS,
    GENERATOR_VERSION,
    ID_NUISANCE,
    ID_STYLES,
    IMAGE_SIZE,
    NEUTRAL_TEMPLATES,
    PRETRAIN_NUISANCE,
    SKETCH_STYLES,
    STYLES,
    Nuisance,
    render_many,
    style_index,
)
from fdalign_plugins.model_registry import registered_tokenizer
from fdalign_plugins.world.tokenizer import world_bpe_ids
from fdalign_plugins.world.model import WORLD_MODEL_NAME, WORLD_PRETRAINED_TAG, model_config, register

#: Random stream of the caption corpus (benchmark splits use streams 1-5).
CORPUS_STREAM = 10
#: Random stream of the held-out probe used for the optional progress evaluation.
PROBE_STREAM = 11


@dataclass
class PretrainConfig:
    """Settings of a pretraining run (the defaults reproduce the shipped weights).

    Attributes:
        seed: seed of the corpus, the initialisation, the caption and batch order.
        per_pair: corpus images per (class, style) pair.
        epochs: passes over the corpus.
        max_steps: stop after this many steps (``None``: ``epochs`` decides).
        batch_size: contrastive batch size.
        lr / weight_decay / warmup_steps: AdamW with linear warm-up then cosine decay.
        neutral_prob: probability of a neutral photo caption for photo-family styles.
        bare_prob: probability of a class-name-only caption for art / sketch styles.
        shift: random translation augmentation, pixels.
        threads: torch CPU threads.
        num_classes: use the first ``num_classes`` classes (``None``: all).
        image_size: corpus image size.
        eval_every: run the held-out zero-shot probe every this many epochs (0: never).
        log_every: steps between progress lines.
        stratified: draw batches with :class:`StratifiedBatches` (else uniformly).
        text_warmup_steps: caption-caption steps of :func:`text_warmup` first (0: none).
        sketch_per_pair: corpus images per (class, style) pair of the sketch family
            (rarer than the other styles, and drawn as rarely in batches).
        caption_swap: probability that a caption of a :data:`CONFUSABLE_PAIRS` class
            names the other class of its pair.
        swap_direction: ``"first"``: only captions of each pair's first class are
            swapped (the names keep distinct meanings); ``"both"``: both ways.
        tau_start / tau_end: the contrastive temperature follows a fixed schedule,
            geometric from ``tau_start`` (open_clip's initial 1/0.07) to ``tau_end``
            (CLIP's final 100), reached after ``tau_ramp`` of the steps and held
            after. ``tau_end=None``: learned, as open_clip does (clamped at 100).
        tau_ramp: fraction of the image-text steps over which tau rises.
    """

    seed: int = 0
    per_pair: int = 40
    epochs: float = 6.0
    max_steps: Optional[int] = None
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.1
    warmup_steps: int = 150
    neutral_prob: float = 0.5
    bare_prob: float = 0.25
    shift: int = 2
    threads: int = 1
    num_classes: Optional[int] = None
    image_size: int = IMAGE_SIZE
    eval_every: float = 0.0
    log_every: int = 50
    stratified: bool = True
    text_warmup_steps: int = 200
    sketch_per_pair: int = 14
    caption_swap: float = 0.5
    swap_direction: str = "first"
    tau_start: float = 1 / 0.07
    tau_end: Optional[float] = 100.0
    tau_ramp: float = 0.75


@dataclass
class CaptionCorpus:
    """Images with their class and style; captions are drawn per visit.

    Attributes:
        images: uint8 ``[N, S, S, 3]``.
        labels: class indices ``[N]``.
        styles: style indices ``[N]`` (into ``STYLE_NAMES``).
    """

    images: np.ndarray
    labels: np.ndarray
    styles: np.ndarray


def build_caption_corpus(seed: int = 0, per_pair: int = 40, num_classes: Optional[int] = None,
                         image_size: int = IMAGE_SIZE, styles: Optional[Sequence[str]] = None,
                         nuisance: Nuisance = PRETRAIN_NUISANCE, stream: int = CORPUS_STREAM,
                         sketch_per_pair: Optional[int] = None) -> CaptionCorpus:
    """Every class × every style, ``per_pair`` images each (``sketch_per_pair`` for the
    sketch family; default ``per_pair``), class-major then style order."""
    n_cls = len(CLASSNAMES) if num_classes is None else num_classes
    names = list(styles or [s.name for s in STYLES])
    n_sk = per_pair if sketch_per_pair is None else sketch_per_pair
    counts = np.asarray([n_sk if s in SKETCH_STYLES else per_pair for s in names], dtype=np.int64)
    st = np.asarray([style_index(s) for s in names], dtype=np.int64)
    style_ix = np.tile(np.repeat(st, counts), n_cls)
    labels = np.repeat(np.arange(n_cls, dtype=np.int64), int(counts.sum()))
    images = render_many(labels, style_ix, seed=seed, stream=stream, nuisance=nuisance, size=image_size)
    return CaptionCorpus(images, labels, style_ix)


class CaptionSampler:
    """Draws a caption (as token ids) for each (class, style) pair of a batch."""

    def __init__(self, tokenizer: Callable, classnames: Sequence[str], neutral_prob: float, bare_prob: float,
                 caption_swap: float = 0.0, swap_direction: str = "both"):
        templates: List[str] = list(dict.fromkeys(
            [t for s in STYLES for t in s.templates] + list(NEUTRAL_TEMPLATES) + list(BARE_TEMPLATES)))
        self.templates = templates
        pos = {t: i for i, t in enumerate(templates)}
        prompts = [t.format(c) for t in templates for c in classnames]
        self.tokens = tokenizer(prompts).view(len(templates), len(classnames), -1)  # [T, C, L]
        n = len(STYLES)
        own = [[pos[t] for t in s.templates] for s in STYLES]
        other = [[pos[t] for t in (NEUTRAL_TEMPLATES if s.family == "photo" else BARE_TEMPLATES)] for s in STYLES]
        width = max(len(x) for x in own + other)
        self.own = np.array([x + [x[0]] * (width - len(x)) for x in own], dtype=np.int64)  # [n_styles, width]
        self.own_n = np.array([len(x) for x in own])
        self.other = np.array([x + [x[0]] * (width - len(x)) for x in other], dtype=np.int64)
        self.other_n = np.array([len(x) for x in other])
        self.p_other = np.array([neutral_prob if s.family == "photo" else bare_prob for s in STYLES])
        assert len(self.p_other) == n
        # partner[c]: the class a swapped caption of c names (c itself outside the pairs)
        self.partner = np.arange(len(classnames), dtype=np.int64)
        if swap_direction not in ("both", "first"):
            raise ValueError(f"swap_direction must be 'both' or 'first', got {swap_direction!r}")
        for a, b in CONFUSABLE_PAIRS:
            if a in classnames and b in classnames:
                ia, ib = list(classnames).index(a), list(classnames).index(b)
                self.partner[ia] = ib
                if swap_direction == "both":
                    self.partner[ib] = ia
        self.caption_swap = float(caption_swap)

    def caption_labels(self, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The class each caption names: the true one, or its pair partner with
        probability ``caption_swap`` (imperfect alt-text)."""
        swap = rng.random(len(labels)) < self.caption_swap
        return np.where(swap, self.partner[labels], labels)

    def template_ids(self, styles: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Template index (into ``self.templates``) of one caption per image."""
        use_other = rng.random(len(styles)) < self.p_other[styles]
        u = rng.random(len(styles))
        own = self.own[styles, (u * self.own_n[styles]).astype(np.int64)]
        other = self.other[styles, (u * self.other_n[styles]).astype(np.int64)]
        return np.where(use_other, other, own)

    def __call__(self, labels: np.ndarray, styles: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        named = self.caption_labels(np.asarray(labels), rng)
        return self.tokens[torch.from_numpy(self.template_ids(styles, rng)), torch.from_numpy(named)]


class StratifiedBatches:
    """Batches of a few styles × every class, each (class, style) pair at most once.

    With random batches most in-batch negatives of a caption differ from it in style,
    which the model learns first (colour statistics are easy); the class, which needs
    shape, is learned slowly. Here every negative either shares the style and differs
    in class, or shares the class and differs in style, and no two images of a batch
    share their (class, style) pair, so there are no false negatives.
    """

    def __init__(self, labels: np.ndarray, styles: np.ndarray, batch_size: int, rng: np.random.Generator):
        self.rng = rng
        self.classes = np.unique(labels)
        self.styles = np.unique(styles)
        self.per_batch = int(np.clip(batch_size // len(self.classes), 1, len(self.styles)))
        self.batch_size = self.per_batch * len(self.classes)
        # pools[style][class] -> indices of that pair, consumed in shuffled order
        self.pairs = {(int(c), int(s)): np.flatnonzero((labels == c) & (styles == s))
                      for c in self.classes for s in self.styles}
        self.cursor = {k: len(v) for k, v in self.pairs.items()}
        self.order = {k: v for k, v in self.pairs.items()}
        # a style is drawn as often as it has images: a rarer style is a rarer sight
        sizes = np.array([len(self.pairs[(int(self.classes[0]), int(s))]) for s in self.styles])
        self.style_weight = sizes // np.gcd.reduce(sizes)
        self.style_queue: List[int] = []

    def _take(self, c: int, s: int) -> int:
        key = (c, s)
        if self.cursor[key] >= len(self.pairs[key]):
            self.order[key] = self.rng.permutation(self.pairs[key])
            self.cursor[key] = 0
        self.cursor[key] += 1
        return int(self.order[key][self.cursor[key] - 1])

    def next(self) -> np.ndarray:
        """Indices of the next batch ``[per_batch * num_classes]``."""
        chosen: List[int] = []
        while len(chosen) < self.per_batch:
            if not self.style_queue:
                self.style_queue = [int(s) for s in self.rng.permutation(np.repeat(self.styles, self.style_weight))]
            s = self.style_queue.pop()
            if s not in chosen:
                chosen.append(s)
        return np.array([self._take(int(c), s) for s in chosen for c in self.classes], dtype=np.int64)


def _random_shift(x: torch.Tensor, shift: int, gen: torch.Generator) -> torch.Tensor:
    """Translate each image of ``x`` ``[B, S, S, 3]`` by up to ``shift`` px (edge padding)."""
    if shift <= 0:
        return x
    B, S = x.shape[0], x.shape[1]
    xp = F.pad(x.permute(0, 3, 1, 2), (shift,) * 4, mode="replicate").permute(0, 2, 3, 1)
    off = torch.randint(0, 2 * shift + 1, (B, 2), generator=gen)
    ar = torch.arange(S)
    rows = (off[:, 0:1] + ar)[:, :, None]  # [B, S, 1]
    cols = (off[:, 1:2] + ar)[:, None, :]  # [B, 1, S]
    return xp[torch.arange(B)[:, None, None], rows, cols]


def to_model_input(images_u8: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 ``[B, S, S, 3]`` → normalised float ``[B, 3, S, S]`` (the eval transform at native size)."""
    x = images_u8.float().div_(255.0).permute(0, 3, 1, 2)
    return (x - mean[:, None, None]) / std[:, None, None]


def world_tokenizer() -> Callable:
    """The world model's tokenizer, as :func:`fdalign_plugins.models.load_clip` gives it."""
    import open_clip

    register()
    return registered_tokenizer(WORLD_MODEL_NAME) or open_clip.get_tokenizer(WORLD_MODEL_NAME)


def create_world_model(seed: int) -> nn.Module:
    """A freshly initialised world model (deterministic given ``seed``)."""
    import open_clip

    register()
    torch.manual_seed(seed)
    return open_clip.create_model(WORLD_MODEL_NAME, pretrained=None)


@torch.no_grad()
def zero_shot_probe(model: nn.Module, tokenizer: Callable, seed: int = 0, per_class: int = 10,
                    image_size: int = IMAGE_SIZE) -> Dict[str, float]:
    """Zero-shot top-1 (80-template prototypes) on a small held-out probe set.

    The probe comes from its own random stream (never a benchmark split), so it may be
    used to follow and tune pretraining without touching the benchmark test sets.
    """
    import open_clip

    was_training = model.training
    model.eval()
    protos = class_prototypes(encode_prompts(model, tokenizer, CLASSNAMES, IMAGENET_TEMPLATES))  # [C, D]
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD)
    out = {}
    for name, styles, stream in (("id", ID_STYLES, PROBE_STREAM), ("sketch", SKETCH_STYLES, PROBE_STREAM + 1)):
        labels = np.repeat(np.arange(len(CLASSNAMES)), per_class)
        st = np.asarray([style_index(styles[i % len(styles)]) for i in range(len(labels))])
        ims = render_many(labels, st, seed=seed, stream=stream, nuisance=ID_NUISANCE, size=image_size)
        feats = normalise(model.encode_image(to_model_input(torch.from_numpy(ims), mean, std)).float())
        out[name] = float(((feats @ protos.t()).argmax(1).numpy() == labels).mean())
    model.train(was_training)
    return out


def text_warmup(model: nn.Module, sampler: "CaptionSampler", corpus: CaptionCorpus, cfg: PretrainConfig,
                rng: np.random.Generator, log: Callable[[str], None] = print) -> List[Tuple[int, float]]:
    """Caption-caption contrastive warm-up of the text tower (``ClipLoss`` on caption pairs).

    From random initialisation the text tower maps every caption to nearly the same
    direction (they share most tokens), so image-text training first sits on a plateau
    where neither tower carries class information. A few hundred cheap text-only steps
    fix that: two captions drawn independently for the same (class, style) pair are a
    positive pair, every other pair of the batch a negative, as two human captions of
    the same image would be. The image tower is untouched.
    """
    import open_clip

    params = [p for n, p in model.named_parameters() if not n.startswith("visual.") and n != "logit_scale"]
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6, weight_decay=cfg.weight_decay)
    loss_fn = open_clip.ClipLoss()
    classes = np.unique(corpus.labels)
    styles = np.unique(corpus.styles)
    n = max(1, min(cfg.batch_size, len(classes) * len(styles)))
    curve = []
    window: List[float] = []
    for step in range(cfg.text_warmup_steps):
        pair = rng.choice(len(classes) * len(styles), size=n, replace=False)
        lab, sty = classes[pair // len(styles)], styles[pair % len(styles)]
        a = model.encode_text(sampler(lab, sty, rng), normalize=True)
        b = model.encode_text(sampler(lab, sty, rng), normalize=True)
        loss = loss_fn(a, b, model.logit_scale.exp().detach())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        window.append(float(loss.detach()))
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.text_warmup_steps:
            curve.append((step + 1, float(np.mean(window))))
            log(f"text warm-up step {step + 1}/{cfg.text_warmup_steps} loss {np.mean(window):.4f}")
            window = []
    return curve


def _param_groups(model: nn.Module, weight_decay: float) -> List[dict]:
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "ln" in n or "bias" in n or "logit_scale" in n else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def pretrain(cfg: PretrainConfig, corpus: Optional[CaptionCorpus] = None,
             log: Callable[[str], None] = print) -> Tuple[nn.Module, Dict]:
    """Train the world model contrastively (open_clip's ``ClipLoss``).

    Args:
        cfg: the run's settings.
        corpus: a prebuilt corpus (default: :func:`build_caption_corpus` from ``cfg``).
        log: progress printer.

    Returns:
        ``(model, history)``: the trained model (eval mode) and a dict with the loss
        curve (``losses``: mean loss per logging window), ``probe`` results, step
        count, wall time and corpus size.
    """
    import open_clip

    torch.set_num_threads(cfg.threads)
    t0 = time.time()
    classnames = list(CLASSNAMES[: cfg.num_classes or len(CLASSNAMES)])
    if corpus is None:
        corpus = build_caption_corpus(cfg.seed, cfg.per_pair, cfg.num_classes, cfg.image_size,
                                      sketch_per_pair=cfg.sketch_per_pair)
    t_corpus = time.time() - t0
    log(f"corpus: {len(corpus.labels)} images ({len(classnames)} classes x {len(STYLES)} styles) in {t_corpus:.1f}s")

    model = create_world_model(cfg.seed)
    if cfg.tau_end is not None:  # a fixed schedule (see tau_at), not a learned parameter
        with torch.no_grad():
            model.logit_scale.fill_(math.log(cfg.tau_start))
        model.logit_scale.requires_grad_(False)
    model.train()
    tokenizer = world_tokenizer()
    sampler = CaptionSampler(tokenizer, classnames, cfg.neutral_prob, cfg.bare_prob, cfg.caption_swap,
                             cfg.swap_direction)
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 1234]))
    gen = torch.Generator().manual_seed(cfg.seed)
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD)
    images = torch.from_numpy(corpus.images)  # uint8 [N, S, S, 3]

    N = len(corpus.labels)
    bs = min(cfg.batch_size, N)
    if cfg.stratified:
        batcher = StratifiedBatches(corpus.labels, corpus.styles, bs, rng)
        bs = batcher.batch_size
    steps_per_epoch = max(1, N // bs)
    total = cfg.max_steps if cfg.max_steps is not None else max(1, int(round(cfg.epochs * steps_per_epoch)))
    opt = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)
    warm = min(cfg.warmup_steps, max(1, total // 10))

    def lr_at(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    ramp_steps = max(1, int(round(cfg.tau_ramp * total)))

    def tau_at(step: int) -> float:
        t = min(1.0, step / ramp_steps)
        return math.exp((1 - t) * math.log(cfg.tau_start) + t * math.log(cfg.tau_end))
    loss_fn = open_clip.ClipLoss()
    eval_steps = int(round(cfg.eval_every * steps_per_epoch)) if cfg.eval_every else 0
    history: Dict = {"losses": [], "probe": [], "steps": total, "corpus_size": N}
    window: List[float] = []
    perm = np.empty(0, dtype=np.int64)
    if cfg.text_warmup_steps:
        history["text_warmup"] = text_warmup(model, sampler, corpus, cfg, rng, log)
    t_train = time.time()
    for step in range(total):
        k = step % steps_per_epoch
        if cfg.stratified:
            idx = batcher.next()
        else:
            if k == 0:
                perm = rng.permutation(N)
            idx = perm[k * bs:(k + 1) * bs]
        x = to_model_input(_random_shift(images[torch.from_numpy(idx)], cfg.shift, gen), mean, std)
        text = sampler(corpus.labels[idx], corpus.styles[idx], rng)
        if cfg.tau_end is not None:
            with torch.no_grad():
                model.logit_scale.fill_(math.log(tau_at(step)))
        img_f = model.encode_image(x, normalize=True)
        txt_f = model.encode_text(text, normalize=True)
        loss = loss_fn(img_f, txt_f, model.logit_scale.exp())
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite pretraining loss at step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        window.append(float(loss.detach()))
        if (step + 1) % cfg.log_every == 0 or step + 1 == total:
            rate = (step + 1) * bs / (time.time() - t_train)
            history["losses"].append((step + 1, float(np.mean(window))))
            log(f"step {step + 1}/{total} epoch {(step + 1) / steps_per_epoch:.2f} loss {np.mean(window):.4f} "
                f"tau {model.logit_scale.exp().item():.1f} lr {sched.get_last_lr()[0]:.2e} {rate:.0f} img/s")
            window = []
        if eval_steps and ((step + 1) % eval_steps == 0 or step + 1 == total):
            probe = zero_shot_probe(model, tokenizer, cfg.seed, image_size=cfg.image_size)
            history["probe"].append((step + 1, probe))
            log(f"  probe at step {step + 1}: zero-shot id {probe['id']:.3f} sketch {probe['sketch']:.3f}")
    model.eval()
    history["wall_s"] = time.time() - t0
    history["train_s"] = time.time() - t_train
    history["corpus_s"] = t_corpus
    return model, history


def save_weights(model: nn.Module, out_dir: Path, metadata: Dict) -> Path:
    """Write ``<out_dir>/fdalign-world-tiny.safetensors`` (fp16) and its ``.json`` sidecar."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: (v.detach().to(torch.float16) if v.is_floating_point() else v.detach()).contiguous()
             for k, v in model.state_dict().items()}
    path = out_dir / f"{WORLD_MODEL_NAME}.safetensors"
    tmp = path.with_suffix(".safetensors.tmp")
    # one metadata key only: safetensors writes its metadata map in hash order, so two
    # keys can land in either order and the same weights get another SHA-256
    save_file(state, str(tmp), metadata={"format": "pt"})
    tmp.replace(path)
    os.chmod(path, 0o644)
    meta = dict(metadata)
    meta["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    meta["bytes"] = path.stat().st_size
    (out_dir / f"{WORLD_MODEL_NAME}.json").write_text(json.dumps(meta, indent=2) + "\n")
    return path


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python tools/world_pretrain.py --out DIR [--seed 0]``"""
    import open_clip

    defaults = PretrainConfig()
    p = argparse.ArgumentParser(description="Pretrain the tiny world CLIP (reproduces the shipped weights).")
    p.add_argument("--out", type=Path, required=True, help="output folder for the .safetensors + .json")
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--epochs", type=float, default=defaults.epochs)
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--per-pair", type=int, default=defaults.per_pair)
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument("--lr", type=float, default=defaults.lr)
    p.add_argument("--threads", type=int, default=defaults.threads)
    p.add_argument("--sketch-per-pair", type=int, default=defaults.sketch_per_pair)
    p.add_argument("--caption-swap", type=float, default=defaults.caption_swap)
    p.add_argument("--swap-direction", choices=("both", "first"), default=defaults.swap_direction)
    p.add_argument("--tau-end", default=str(defaults.tau_end),
                   help="final temperature of the fixed tau schedule, or 'learned' (open_clip's learned tau)")
    p.add_argument("--tau-start", type=float, default=defaults.tau_start)
    p.add_argument("--tau-ramp", type=float, default=defaults.tau_ramp)
    p.add_argument("--eval-every", type=float, default=0.0, help="probe zero-shot every N epochs (0: never)")
    args = p.parse_args(argv)
    tau = None if args.tau_end == "learned" else float(args.tau_end)
    cfg = dataclasses.replace(defaults, seed=args.seed, epochs=args.epochs, max_steps=args.max_steps,
                              per_pair=args.per_pair, batch_size=args.batch_size, lr=args.lr,
                              threads=args.threads, eval_every=args.eval_every, sketch_per_pair=args.sketch_per_pair,
                              caption_swap=args.caption_swap, swap_direction=args.swap_direction, tau_end=tau,
                              tau_start=args.tau_start,
                              tau_ramp=args.tau_ramp)
    model, hist = pretrain(cfg, log=lambda s: print(s, flush=True))
    tokenizer = world_tokenizer()
    probe = zero_shot_probe(model, tokenizer, cfg.seed, image_size=cfg.image_size)
    meta = {
        "model": WORLD_MODEL_NAME,
        "pretrained_tag": WORLD_PRETRAINED_TAG,
        "model_config": model_config(),
        # the tokenizer's compact vocabulary: CLIP BPE ids in row order (world/tokenizer.py)
        "vocabulary_bpe_ids": list(world_bpe_ids()),
        "pretrain_config": dataclasses.asdict(cfg),
        "generator_version": GENERATOR_VERSION,
        "corpus_size": hist["corpus_size"],
        "steps": hist["steps"],
        "final_loss": hist["losses"][-1][1] if hist["losses"] else None,
        "loss_curve": hist["losses"],
        "logit_scale": float(model.logit_scale.exp().item()),
        "probe_zero_shot": probe,
        "wall_time_s": round(hist["wall_s"], 1),
        "stored_dtype": "float16",
        "command": "python tools/world_pretrain.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "versions": {"torch": torch.__version__, "open_clip": open_clip.__version__, "numpy": np.__version__,
                     "python": platform.python_version()},
    }
    path = save_weights(model, args.out, meta)
    print(f"probe zero-shot: id {probe['id']:.3f} sketch {probe['sketch']:.3f}; tau {meta['logit_scale']:.1f}")
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB) in {hist['wall_s'] / 60:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
