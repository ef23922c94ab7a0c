"""Non-private fine-tuning with AdamW (full model, prefix or LoRA): the leakage baseline."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from dp_audit.trainers.causal_lm import batch_loss_fn
from dp_audit.trainers.base import TRAINERS, Prepared, TrainResult, claim_for_nonprivate
from dp_audit.trainers.modeling import model_inputs, make_optimizer, subset, trainable_parameters


def fit_nonprivate(model, data, *, epochs: int, batch_size: int, lr: float, weight_decay: float,
                   generator: torch.Generator, progress: bool = True, desc: str = "non-private",
                   extra_loss=None, optimizer: str = "adamw", loss_fn=None) -> list[float]:
    """Plain shuffled-minibatch AdamW; ``extra_loss(model)`` adds a regulariser if given;
    ``loss_fn(model, batch)``: the batch loss (default: cross-entropy of the class logits; causal
    LMs: trainers.causal_lm.lm_loss)."""
    opt = make_optimizer(trainable_parameters(model), name=optimizer, lr=lr, weight_decay=weight_decay)
    n = int(data["input_ids"].shape[0])
    steps_per_epoch = (n + batch_size - 1) // batch_size
    bar = tqdm(total=epochs * steps_per_epoch, desc=desc, disable=not progress, leave=False)
    model.train()
    losses: list[float] = []
    for _ in range(epochs):
        perm = torch.randperm(n, generator=generator)
        for s in range(0, n, batch_size):
            b = subset(data, perm[s : s + batch_size])
            if loss_fn is not None:
                loss = loss_fn(model, b)
            else:
                loss = torch.nn.functional.cross_entropy(model(**model_inputs(b)).logits, b["labels"])
            if extra_loss is not None:
                loss = loss + extra_loss(model)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
    bar.close()
    return losses


@TRAINERS.register("nondp")
class NonPrivateTrainer:
    name = "nondp"

    def fit(self, prep: Prepared, model, *, generator: torch.Generator) -> TrainResult:
        cfg = prep.cfg
        losses = fit_nonprivate(model, prep.train, epochs=cfg.train.epochs, batch_size=cfg.train.batch_size,
                                lr=cfg.train.lr, weight_decay=cfg.train.weight_decay, generator=generator,
                                progress=cfg.train.progress, optimizer=cfg.train.optimizer,
                                loss_fn=batch_loss_fn(prep))
        claim = claim_for_nonprivate(cfg)
        ledger = {"events": [{"mechanism": "none", "component": "training"}], "unaccounted": claim.unaccounted}
        return TrainResult(model=model, ledger=ledger, claim=claim,
                           private_metrics={"final_train_loss": losses[-1] if losses else float("nan")})
