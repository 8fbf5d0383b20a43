"""Grounding warm-up: the union encoder (BEiT-3) and the Mask Prompt Generator trained alone to
point at the referred object, before the whole model trains (``grounding_warmup_steps``).

Trained from scratch, RS2-SAM2 learns the colour words of a sentence but hardly which object the
sentence means: the MPG prior, its only dense pointer, stays at chance (benchmarks/README.md, issue
14). With a prior that points at the target, the same decoder segments it well. A warm-up step runs
only BEiT-3 and the MPG at BEiT-3's small input, several times cheaper than a step of the whole
model, so the union encoder sees many more sentences in the same time. The loss is
:func:`rs2sam2.losses.grounding_loss` of the MPG's patch-grid scores against the target mask.

Samples are drawn with replacement from all training expressions by a generator seeded with
``(seed, rank)``; the ranks average their gradients after each step (the model's DDP wrapper is not
involved, its parameters stay in step because every rank applies the same update).
"""

from __future__ import annotations

import time
from typing import Any

import torch

from ..data.collate import list_collate
from ..data.transforms import image_to_tensor, resize_mask
from ..losses import grounding_loss
from ..runtime import Dist


class _GroundingSamples(torch.utils.data.Dataset):
    """Expression ``i`` of a dataset as BEiT-3's input image, the target mask at the model size and the text."""

    def __init__(self, dataset, evf_size: int, image_size: int) -> None:
        self.dataset, self.evf_size, self.image_size = dataset, evf_size, image_size

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict[str, Any]:
        s = self.dataset.load(int(i))
        return {"image_evf": image_to_tensor(s["image"], self.evf_size), "mask": resize_mask(s["mask"], self.image_size),
                "text": s["text"]}


def grounding_warmup(model, dataset, tokenizer, *, steps: int, batch_size: int, lr: float, weight_decay: float,
                     seed: int, d: Dist, max_len: int, mask_rule: str, num_workers: int = 0,
                     log=None, log_every: int = 250) -> dict[str, Any]:
    """Train ``model.union_encoder`` and ``model.mpg`` (their trainable parameters) for ``steps`` steps
    of ``batch_size`` expressions per rank with AdamW at ``lr``; returns the steps, seconds and the
    mean loss of the first and the last ``log_every`` steps."""
    params = [p for m in (model.union_encoder, model.mpg) for p in m.parameters() if p.requires_grad]
    if not params:
        raise ValueError("grounding warm-up: the union encoder and the MPG have no trainable parameter")
    cfg = model.config
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed * 1000 + d.rank)
    sampler = torch.utils.data.RandomSampler(range(len(dataset)), replacement=True,
                                             num_samples=steps * batch_size, generator=generator)
    loader = torch.utils.data.DataLoader(_GroundingSamples(dataset, cfg.beit3.img_size, cfg.image_size),
                                         batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                                         collate_fn=list_collate, drop_last=True)
    model.train()
    start, window, first, last = time.perf_counter(), [], None, None
    for step, samples in enumerate(loader, 1):
        images = torch.stack([s["image_evf"] for s in samples]).to(d.device)
        masks = torch.stack([s["mask"] for s in samples]).float().to(d.device)
        ids, attention = tokenizer.batch([s["text"] for s in samples], max_len=max_len, mask_rule=mask_rule)
        loss = grounding_loss(model.pointing_logits(images, ids.to(d.device), attention.bool().to(d.device)), masks)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        d.average_gradients(params)
        optimizer.step()
        window.append(float(loss.detach()))
        if step % log_every == 0 or step == steps:
            mean = sum(window) / len(window)
            first = mean if first is None else first
            last, window = mean, []
            if log is not None:
                log(f"grounding warm-up: step {step}/{steps}, loss {mean:.3f}, {time.perf_counter() - start:.0f} s")
    return {"steps": steps, "seconds": round(time.perf_counter() - start, 1), "loss_first": first, "loss_last": last}
