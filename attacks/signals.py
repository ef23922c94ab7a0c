"""Per-example signals of a model on given texts (loss, logits, logit-scaled confidence)."""
from __future__ import annotations
import dataclasses
from dataclasses import dataclass
from pathlib import Path
import numpy as np
import torch
from tqdm.auto import tqdm
from dp_audit.io import load_npz, save_npz


@dataclass(frozen=True)
class Signals:
    loss: np.ndarray
    logits: np.ndarray | None = None
    labels: np.ndarray | None = None
    confidence_logit: np.ndarray | None = None

    def save(self, path):
        save_npz(path, **{f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None})

    @classmethod
    def load(cls, path):
        z = load_npz(path)
        return cls(**{f.name: z.get(f.name) for f in dataclasses.fields(cls)})


@torch.inference_mode()
def compute_signals(model, tokenizer, texts, labels=None, *, kind="classifier", batch_size=32, max_length=128, progress=True):
    model.eval()
    losses, logits_all = [], []
    labels_t = torch.as_tensor(list(labels), dtype=torch.long)
    for s in tqdm(range(0, len(texts), batch_size), desc="signals", disable=not progress, leave=False):
        enc = tokenizer(list(texts[s:s + batch_size]), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        n, L = enc["input_ids"].shape
        kw = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
        if "token_type_ids" in enc:
            kw["token_type_ids"] = enc["token_type_ids"]
        logits = model(**kw).logits.float()
        y = labels_t[s:s + batch_size]
        losses.append(torch.nn.functional.cross_entropy(logits, y, reduction="none"))
        logits_all.append(logits)
    logits = torch.cat(logits_all)
    logp = torch.log_softmax(logits, -1)
    lp_y = logp.gather(1, labels_t[:, None]).squeeze(1)
    other = torch.logsumexp(logp.scatter(1, labels_t[:, None], float("-inf")), -1)
    return Signals(loss=torch.cat(losses).numpy().astype(float), logits=logits.numpy(), labels=labels_t.numpy(),
                   confidence_logit=(lp_y - other).numpy().astype(float))
