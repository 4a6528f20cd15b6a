"""Training an image tower into the text space: the InfoNCE loop, held-out recall, and
saving the tower (see :mod:`newarrivals.indexer.towers.image` for the method)."""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from newarrivals.indexer.catalog.schema import Product
from newarrivals.indexer.encoders import (
    l2_normalize,
)
from newarrivals.indexer.errors import CatalogError, ConfigError
from newarrivals.indexer.towers.image_config import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    ImageTowerConfig,
    ImageTowerReport,
    atomic_dir,
    check_out_dir,
    write_manifest,
)
from newarrivals.indexer.towers.image_model import (
    MAX_LOGIT_SCALE,
    init_state_dict,
    load_matching_weights,
    model_config,
    new_model,
    normalisation,
    preprocess_config,
)
from newarrivals.indexer.towers.image_photos import PhotoBatches, decode_photos, embed_photos
from newarrivals.indexer.towers.image_schedule import FreezeSchedule, param_groups
from newarrivals.indexer.towers.pretrained import SCRATCH_INIT
from newarrivals.indexer.towers.training_loop import EpochOutcome, TimeBudget, run_epochs

if TYPE_CHECKING:
    pass

__all__ = ["image_text_recall", "train_image_tower"]

logger = logging.getLogger(__name__)


def image_text_recall(
    image_vectors: np.ndarray, text_vectors: np.ndarray, ks: Sequence[int] = (1, 10)
) -> dict[str, float]:
    """Image -> text retrieval recall: row ``i``'s own text is ``text_vectors[i]``.

    Each image ranks all the texts by cosine; recall@k is the share of images whose own text
    ranks in the top k. A text scoring exactly as high as the own text (a duplicate text)
    does not push it down, so products sharing one description are not counted as misses.

    Args:
        image_vectors: ``(n, d)`` unit vectors.
        text_vectors: ``(n, d)`` unit vectors, row-aligned with ``image_vectors``.
        ks: cut-offs.

    Returns:
        ``{"R@1": ..., "R@10": ...}``; empty for zero rows.

    Example:
        >>> eye = np.eye(3, dtype=np.float32)
        >>> image_text_recall(eye, eye, ks=(1,))
        {'R@1': 1.0}
    """
    if image_vectors.shape != text_vectors.shape:
        raise ValueError(
            f"image and text vectors must be row-aligned with one shape; got "
            f"{image_vectors.shape} and {text_vectors.shape}."
        )
    n = image_vectors.shape[0]
    if n == 0:
        return {}
    img = image_vectors.astype(np.float32, copy=False)
    txt = text_vectors.astype(np.float32, copy=False)
    ranks = np.empty(n, dtype=np.int64)
    for start in range(0, n, 1024):  # bounded memory for big held-out sets
        scores = img[start : start + 1024] @ txt.T
        own = scores[np.arange(scores.shape[0]), np.arange(start, start + scores.shape[0])]
        ranks[start : start + scores.shape[0]] = (scores > own[:, None]).sum(axis=1)
    return {f"R@{k}": float((ranks < k).mean()) for k in ks}


def _select_rows(products: Sequence[Product], text_vectors: np.ndarray | None) -> list[int]:
    """Rows with a photo and real text (a text row of zeros means no text)."""
    rows = []
    for i, p in enumerate(products):
        if not (p.has_image and p.has_text):
            continue
        if text_vectors is not None and not np.any(text_vectors[i]):
            continue
        rows.append(i)
    return rows


def _check_text_vectors(products: Sequence[Product], text_vectors: np.ndarray, what: str) -> None:
    if text_vectors.ndim != 2 or text_vectors.shape[0] != len(products):
        raise ConfigError(
            f"{what} must be a (n_products, dim) array with one row per product; got shape "
            f"{text_vectors.shape} for {len(products)} products."
        )


def _text_groups(text_vectors: np.ndarray) -> np.ndarray:
    """An id per distinct text vector: products sharing a text are not negatives of each
    other (H&M colour variants often borrow one description)."""
    _, inverse = np.unique(text_vectors, axis=0, return_inverse=True)
    return np.asarray(inverse, dtype=np.int64).reshape(-1)


def _lr_at(config: ImageTowerConfig, step: int, progress: float) -> float:
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    return config.lr * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def train_image_tower(
    products: Sequence[Product],
    text_vectors: np.ndarray,
    config: ImageTowerConfig,
    out_dir: Path,
    *,
    test_products: Sequence[Product] = (),
    test_text_vectors: np.ndarray | None = None,
    launched_before: datetime | None = None,
    progress: bool = True,
) -> ImageTowerReport:
    """Train an image tower so each product's photo lands near its text; save it.

    Trains on the products with both a photo and text (``text_vectors[i]`` belongs to
    ``products[i]``; rows of products without text are ignored), holds out
    ``valid_fraction`` (or ``valid_size``) of them to keep the best checkpoint, and writes
    the tower to ``out_dir`` atomically (see the module docstring for the layout).

    Args:
        products: the catalogue's products (photos are read from ``product.image``).
        text_vectors: ``(len(products), dim)`` unit vectors of the frozen text encoder;
            ``dim`` becomes the tower's output dim.
        config: training settings.
        out_dir: where the tower goes (replaced if it is an earlier tower).
        test_products: optional second held-out set, only measured (never trained on, never
            used to pick the checkpoint).
        test_text_vectors: text vectors of ``test_products``, row-aligned.
        launched_before: only recorded in the report: the launch cutoff the caller used to
            choose ``products`` (see :func:`align_images`).
        progress: show progress bars.

    Returns:
        The report also written to ``tower.json``.

    Raises:
        ConfigError: bad shapes, an unusable ``init``, or an unwritable ``out_dir``.
        CatalogError: fewer than two products with a readable photo and text.
    """
    import torch
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    from newarrivals.indexer.device import resolve_device

    _check_text_vectors(products, text_vectors, "text_vectors")
    if test_text_vectors is not None:
        _check_text_vectors(test_products, test_text_vectors, "test_text_vectors")
    elif test_products:
        raise ConfigError("test_products were given without test_text_vectors.")
    check_out_dir(out_dir)
    device = resolve_device(config.device)
    embed_dim = int(text_vectors.shape[1])
    # Models first: a bad init fails before minutes of photo decoding.
    model_cfg = model_config(config, embed_dim)
    channels_last = "timm_model_name" in model_cfg["vision_cfg"]
    untrained = new_model(model_cfg, config.seed)
    model = untrained
    starts_pretrained = config.init not in (None, SCRATCH_INIT)
    if config.init is not None and starts_pretrained:
        model = copy.deepcopy(untrained)
        load_matching_weights(model, init_state_dict(config.init, config.architecture), config.init)
    text_all = l2_normalize(np.asarray(text_vectors, dtype=np.float32))

    rows = _select_rows(products, text_all)
    test_rows = (
        _select_rows(test_products, test_text_vectors) if test_text_vectors is not None else []
    )
    paths = [str(products[i].image) for i in rows] + [
        str(test_products[i].image) for i in test_rows
    ]
    logger.info(
        "decoding %d photos at %dpx (%d train/valid, %d test)",
        len(paths),
        config.image_size,
        len(rows),
        len(test_rows),
    )
    t_decode = time.perf_counter()
    photos_np, failures = decode_photos(paths, config.image_size, config.workers, progress)
    logger.info("decoded in %.1fs; %d unreadable", time.perf_counter() - t_decode, len(failures))
    ok = np.array([i not in failures for i in range(len(paths))], dtype=bool)
    n_main = len(rows)
    main_cache = np.flatnonzero(ok[:n_main])
    test_cache = n_main + np.flatnonzero(ok[n_main:])
    if len(main_cache) < 2:
        raise CatalogError(
            f"need at least 2 products with both a readable photo and text to train an image "
            f"tower; found {len(main_cache)}."
        )
    texts_main = text_all[np.asarray(rows, dtype=np.int64)[ok[:n_main]]]
    texts_test = (
        l2_normalize(np.asarray(test_text_vectors, dtype=np.float32))[
            np.asarray(test_rows, dtype=np.int64)[ok[n_main:]]
        ]
        if test_text_vectors is not None and len(test_cache)
        else np.zeros((0, embed_dim), dtype=np.float32)
    )

    # Split: a seeded permutation of the usable products.
    rng = np.random.default_rng(config.seed)
    order = rng.permutation(len(main_cache))
    n_valid = (
        config.valid_size
        if config.valid_size is not None
        else round(config.valid_fraction * len(main_cache))
    )
    n_valid = min(n_valid, len(main_cache) - 2)
    valid_pos, train_pos = np.sort(order[:n_valid]), np.sort(order[n_valid:])
    train_cache, valid_cache = main_cache[train_pos], main_cache[valid_pos]
    texts_train, texts_valid = texts_main[train_pos], texts_main[valid_pos]
    groups_train = torch.from_numpy(_text_groups(texts_train))

    photos = torch.from_numpy(photos_np).permute(0, 3, 1, 2).contiguous()  # (n, 3, s, s)
    del photos_np
    generator = torch.Generator().manual_seed(config.seed)
    mean, std = normalisation(config.architecture)
    batches = PhotoBatches(
        photos, device, channels_last=channels_last, generator=generator, mean=mean, std=std
    )
    eval_bs = max(config.batch_size, 256)

    def recall(model: Any, cache_rows: np.ndarray, texts: np.ndarray) -> dict[str, float]:
        if len(cache_rows) == 0:
            return {}
        return image_text_recall(embed_photos(model, batches, cache_rows, eval_bs), texts)

    def prepare(model: Any) -> Any:
        model = model.to(device)
        return model.to(memory_format=torch.channels_last) if channels_last else model

    untrained = prepare(untrained)
    valid_untrained = recall(untrained, valid_cache, texts_valid)
    test_untrained = recall(untrained, test_cache, texts_test)
    if starts_pretrained:
        model = prepare(model)
        valid_initial = recall(model, valid_cache, texts_valid)
        del untrained
    else:
        model, valid_initial = untrained, valid_untrained
    logger.info(
        "held out %d of %d products; untrained %s, start %s",
        len(valid_cache),
        len(main_cache),
        valid_untrained,
        valid_initial,
    )

    assert config.backbone_lr_scale is not None  # resolved by ImageTowerConfig
    optimizer = torch.optim.AdamW(
        param_groups(model, config.weight_decay, config.backbone_lr_scale), lr=config.lr
    )
    schedule = FreezeSchedule(model, config)
    text_dev = torch.from_numpy(texts_train).to(device)
    n_train = len(train_cache)
    bs = min(config.batch_size, n_train)
    # A last batch of one has no negative: drop it (its photo comes up again next epoch).
    steps_per_epoch = math.ceil(n_train / bs) if n_train % bs != 1 else n_train // bs
    total_steps = steps_per_epoch * config.max_epochs

    step, seen, step_seconds = 0, 0, 0.0
    model.train()
    schedule.update(0.0)
    bar = tqdm(total=None, desc="align", unit="step", disable=not progress)

    def run_epoch(epoch: int, budget: TimeBudget) -> EpochOutcome[None]:
        nonlocal step, seen, step_seconds
        perm = torch.randperm(n_train, generator=generator)
        schedule.freeze_norms()  # the held-out recall put every layer back in train mode
        for b in range(steps_per_epoch):
            if budget.expired():
                break
            t_step = time.perf_counter()
            progress = max(budget.fraction(), step / total_steps)
            schedule.update(progress)
            lr = _lr_at(config, step, progress)
            for group in optimizer.param_groups:
                group["lr"] = lr * group["lr_scale"]
            pos = perm[b * bs : (b + 1) * bs]
            x = (
                batches.augmented(torch.from_numpy(train_cache)[pos])
                if config.augment
                else (batches.plain(torch.from_numpy(train_cache)[pos]))
            )
            feats = torch.nn.functional.normalize(model.encode_image(x).float(), dim=-1)
            logits = model.logit_scale.exp() * feats @ text_dev[pos].T
            g = groups_train[pos].to(device)
            same = (g[:, None] == g[None, :]).float()
            target = same / same.sum(dim=1, keepdim=True)
            loss = -(target * logits.log_softmax(dim=1)).sum(dim=1).mean()
            if config.symmetric:
                loss = 0.5 * (loss - (target * logits.T.log_softmax(dim=1)).sum(dim=1).mean())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0.0, MAX_LOGIT_SCALE)
            step += 1
            seen += int(pos.shape[0])
            step_seconds += time.perf_counter() - t_step
            bar.update(1)
            if step % 20 == 0:
                bar.set_postfix(
                    epoch=epoch, loss=f"{loss.item():.3f}", scale=f"{model.logit_scale.exp():.1f}"
                )
        if not len(valid_cache):
            return EpochOutcome(record=None, score=None)
        r = recall(model, valid_cache, texts_valid)
        logger.info("epoch %d (%.0fs): held-out %s", epoch, budget.elapsed(), r)
        return EpochOutcome(record=None, score=r["R@10"])

    budget = TimeBudget(config.max_minutes)
    run = run_epochs(
        model,
        run_epoch,
        max_epochs=config.max_epochs,
        budget=budget,
        patience=config.patience,
        initial_score=valid_initial.get("R@10", -math.inf),
        # Snapshots on the CPU leave the accelerator's memory to training.
        snapshot_device="cpu",
        score_name="held-out Recall@10",
    )
    bar.close()
    train_seconds = budget.elapsed()
    valid_trained = recall(model, valid_cache, texts_valid)
    test_trained = recall(model, test_cache, texts_test)

    report = ImageTowerReport(
        out_dir=out_dir,
        architecture=config.architecture,
        embed_dim=embed_dim,
        image_size=config.image_size,
        device=device,
        n_train=n_train,
        n_valid=len(valid_cache),
        n_test=len(test_cache),
        photo_failures=len(failures),
        epochs=round(seen / n_train, 2),
        steps=step,
        best_epoch=run.best_epoch,
        train_seconds=round(train_seconds, 1),
        # Throughput of the training steps alone (the held-out evaluations are excluded).
        images_per_second=round(seen / step_seconds, 1) if step_seconds > 0 else 0.0,
        valid_trained=valid_trained,
        valid_untrained=valid_untrained,
        valid_initial=valid_initial,
        test_trained=test_trained,
        test_untrained=test_untrained,
        launched_before=launched_before.isoformat() if launched_before else None,
    )
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_dir(out_dir) as tmp:
        save_file(state, str(tmp / WEIGHTS_FILE))
        (tmp / CONFIG_FILE).write_text(
            json.dumps(
                {
                    "model_cfg": model_cfg,
                    "preprocess_cfg": preprocess_config(config.image_size, config.architecture),
                },
                indent=2,
            )
        )
        main_ids = [products[rows[c]].product_id for c in range(n_main)]
        write_manifest(
            tmp,
            config,
            model_cfg,
            report,
            # Which products were held out, so an evaluation can stay off them.
            held_out={
                "valid": [main_ids[c] for c in valid_cache.tolist()],
                "test": [
                    test_products[test_rows[c - n_main]].product_id for c in test_cache.tolist()
                ],
            },
        )
    logger.info("image tower saved to %s", out_dir)
    return report
