"""Where the DP noise comes from (issue 12 item 5).

Default: a generator seeded from OS entropy whose seed is never recorded, so two runs with the
same seeds draw different noise and nothing in the run directory regenerates it. With
``privacy.reproducible_noise = true`` (tests, audits) the noise is seeded from train.seed: two runs
are identical, the ledger says ``replayable`` and the report shows "noise replayable: not DP if
the manifest is released".
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from dp_audit.config import run_config_from_dict
from dp_audit.trainers import base
from dp_audit.trainers.base import noise_generator, noise_record
from dp_audit.trainers.dpzo import ZOPlan, train_dpzo
from tests.test_dpsgd_empty_batch import _run_empty_steps


def _flat(updates) -> torch.Tensor:
    return torch.cat([d.flatten() for step in updates for d in step])


def test_dpsgd_noise_differs_by_default_and_is_identical_with_the_switch():
    """Plausible bugs: the noise generator seeded from train.seed regardless of the switch (today's
    code: replayable from the manifest); the switch ignored (tests comparing runs break)."""
    a = _flat(_run_empty_steps("hooks", reproducible=False)[3])
    b = _flat(_run_empty_steps("hooks", reproducible=False)[3])
    assert not torch.equal(a, b) and a.abs().max() > 0
    c = _flat(_run_empty_steps("hooks", reproducible=True)[3])
    d = _flat(_run_empty_steps("hooks", reproducible=True)[3])
    assert torch.equal(c, d)


def _dpzo_gradients(reproducible: bool) -> list[float]:
    cfg = run_config_from_dict({"trainer": "dpzo", "train": {"seed": 4, "progress": False},
                                "privacy": {"reproducible_noise": reproducible}})
    plan = ZOPlan(noise="gaussian", sample_rate=0.1, steps=20, clip=1.0, perturbation_scale=1e-3,
                  noise_multiplier=1.0, reproducible_noise=reproducible)
    prep = SimpleNamespace(cfg=cfg, train={"labels": torch.arange(50)})
    steps = train_dpzo(torch.nn.Linear(3, 2), prep, plan, generator=torch.Generator().manual_seed(0),
                       loss_fn=lambda m, b: torch.zeros(b["labels"].shape[0]))
    return [s.gradient for s in steps]


def test_dpzo_noise_differs_by_default_and_is_identical_with_the_switch():
    """The same for DP-ZO (its noise used to come from the training generator, whose seed and
    draws — the public direction seeds — are in the run directory)."""
    assert _dpzo_gradients(False) != _dpzo_gradients(False)
    assert _dpzo_gradients(True) == _dpzo_gradients(True)


def test_default_noise_does_not_depend_on_train_seed_and_the_seeded_one_does():
    """noise_generator itself: entropy-seeded generators differ; seeded ones depend on train.seed
    only, and their stream is not the training generator's (seeded with train.seed + 1)."""
    draw = lambda g: torch.randn(4, generator=g)  # noqa: E731
    assert not torch.equal(draw(noise_generator(reproducible=False, train_seed=1)),
                           draw(noise_generator(reproducible=False, train_seed=1)))
    s1 = draw(noise_generator(reproducible=True, train_seed=1))
    assert torch.equal(s1, draw(noise_generator(reproducible=True, train_seed=1)))
    assert not torch.equal(s1, draw(noise_generator(reproducible=True, train_seed=2)))
    for seed in (0, 1, 2):  # never the training stream of this seed or of its neighbours
        assert not torch.equal(s1, draw(torch.Generator().manual_seed(seed)))
    assert noise_record(reproducible=False) == {"source": "os_entropy", "replayable": False, "batches": "os_entropy"}
    assert noise_record(reproducible=True)["replayable"] is True


SENTINEL = 5_377_291_004_418_823_311  # stands in for the OS-entropy seed


def _text_files(run: Path):
    for f in run.rglob("*"):
        if f.is_file() and f.suffix in (".json", ".jsonl", ".toml", ".txt", ".md", ".html", ""):
            yield f


@pytest.mark.parametrize("trainer", ["dpsgd", "dpzo"])
def test_run_directory_never_contains_the_entropy_seed(trainer, tiny_config, tmp_path, monkeypatch):
    """The entropy seed is replaced by a known value; a run with the default noise must not write
    it anywhere (ledger, manifest, metrics, config copies), and its ledger says os_entropy / not
    replayable; the same run with the switch says seeded / replayable. Plausible bugs: the seed
    recorded in the manifest 'for reproducibility'; the ledger claiming 'os_entropy' while the
    switch is on."""
    from dp_audit.trainers.base import train_run

    calls = []

    def fake_randbits(k: int) -> int:
        calls.append(k)
        return SENTINEL

    monkeypatch.setattr(base.secrets, "randbits", fake_randbits)
    extra = {"dpzo": {"steps": 5}} if trainer == "dpzo" else {}
    run = train_run(tiny_config(trainer=trainer, privacy={"reproducible_noise": False}, **extra),
                    tmp_path / "default", progress=False)
    assert calls, "the noise generator did not draw its seed from the OS-entropy source"
    for f in _text_files(run):
        text = f.read_text(errors="ignore")
        assert str(SENTINEL) not in text and format(SENTINEL, "x") not in text, f
    ledger = json.loads((run / "ledger.json").read_text())
    assert ledger["noise"] == {"source": "os_entropy", "replayable": False, "batches": "os_entropy"}

    calls.clear()
    run2 = train_run(tiny_config(trainer=trainer, **extra), tmp_path / "seeded", progress=False)
    assert not calls
    ledger2 = json.loads((run2 / "ledger.json").read_text())
    assert ledger2["noise"]["source"] == "seeded" and ledger2["noise"]["replayable"] is True


def test_report_shows_replayable_noise(tmp_path):
    """The report lists replayable noise with the issue's wording, and only then. Plausible bug:
    the ledger flag written but never shown."""
    from dp_audit.manifest import add_artifacts
    from dp_audit.reports.markdown import render_markdown
    from dp_audit.reports.viewmodel import NOISE_REPLAYABLE, build_view
    from tests.test_reports_viewmodel import copy_run

    def with_noise(name: str, record: dict) -> Path:
        run = copy_run(tmp_path, name=name)
        ledger = json.loads((run / "ledger.json").read_text())
        ledger["noise"] = record
        (run / "ledger.json").write_text(json.dumps(ledger))
        add_artifacts(run, ["ledger.json"])
        return run

    seeded = build_view(with_noise("seeded", noise_record(reproducible=True)))
    parts = {u.component: u.reason for u in seeded.unaccounted}
    assert NOISE_REPLAYABLE == "noise replayable: not DP if the manifest is released"
    assert NOISE_REPLAYABLE in parts["noise"]
    assert NOISE_REPLAYABLE in render_markdown(seeded)
    entropy = build_view(with_noise("entropy", noise_record(reproducible=False)))
    assert "noise" not in {u.component for u in entropy.unaccounted}


def test_poisson_batches_are_secret_by_default(tiny_config, monkeypatch):
    """Bug caught: the Poisson batches of DP-SGD and DP-ZO were drawn from the training generator,
    seeded from train.seed which manifest.json records: whoever holds the manifest knows which
    examples each step used, and the amplification by subsampling that the claimed ε relies on is
    gone. By default the batches come from a secret generator; with reproducible_noise they are
    the training generator's (replayable, as the ledger says)."""
    import torch

    from dp_audit.trainers import zo
    from dp_audit.trainers.base import prepare
    from dp_audit.trainers.dpsgd import make_private, plan
    from dp_audit.trainers.dpzo import plan_zo, train_dpzo
    from dp_audit.trainers.modeling import build_classifier

    for reproducible in (False, True):
        cfg = tiny_config(trainer="dpsgd", canaries={"m": 10}, privacy={"reproducible_noise": reproducible})
        prep = prepare(cfg, cache_root=cfg.model.cache_dir, progress=False)
        train_gen = torch.Generator().manual_seed(cfg.train.seed + 1)
        model = build_classifier(prep.backbone_dir, cfg.model, generator=torch.Generator().manual_seed(0))
        _, _, loader = make_private(model, prep, cfg, plan(cfg, prep.n_train), generator=train_gen)
        assert (loader.batch_sampler.generator is train_gen) is reproducible

        seen = []
        real = zo.poisson_indices
        monkeypatch.setattr(zo, "poisson_indices", lambda n, q, *, generator: seen.append(generator) or real(
            n, q, generator=generator))
        zcfg = tiny_config(trainer="dpzo", canaries={"m": 10}, model={"tuning": "prefix", "num_virtual_tokens": 4},
                           dpzo={"steps": 2}, privacy={"reproducible_noise": reproducible})
        zprep = prepare(zcfg, cache_root=zcfg.model.cache_dir, progress=False)
        zmodel = build_classifier(zprep.backbone_dir, zcfg.model, generator=torch.Generator().manual_seed(0))
        zgen = torch.Generator().manual_seed(1)
        train_dpzo(zmodel, zprep, plan_zo(zcfg, zprep.n_train), generator=zgen)
        monkeypatch.setattr(zo, "poisson_indices", real)
        assert seen and all((g is zgen) is reproducible for g in seen)


@pytest.mark.parametrize("reproducible", [True, False])
def test_gate_names_replayable_noise_and_fails_on_it_with_on_unaccounted_fail(reproducible, tmp_path):
    """A null run (no leakage) whose ledger says the noise is replayable: the gate must name it
    like any unaccounted part (the verdict line says "noise"), and ``on_unaccounted = "fail"``
    (CI requiring a claim that covers all of training) must fail it; with OS-entropy noise the
    same run passes. Bug caught: the replayable flag shown by the report but ignored by the gate
    (a run that is not DP once its manifest is released passed a gate that demands full
    accounting)."""
    from dp_audit.gate import GatePolicy, evaluate_gate, verdict_line
    from dp_audit.io import atomic_write_json
    from dp_audit.manifest import add_artifacts
    from tests.test_gate import make_run

    run = make_run(tmp_path / "r", mu=0.0, epsilon=1.0)
    atomic_write_json(run / "ledger.json", {"events": [], "unaccounted": [],
                                            "noise": noise_record(reproducible=reproducible)})
    add_artifacts(run, ["ledger.json"])
    res = evaluate_gate(run, GatePolicy(on_unaccounted="fail"))
    if reproducible:
        assert res.verdict.status == "fail" and res.unaccounted == ("noise",) and res.failed_on_unaccounted
        assert "not accounted: noise" in verdict_line(res)
        assert "not DP if the manifest is released" in res.unaccounted_reasons[0]
        assert evaluate_gate(run).verdict.status == "pass"  # default policy: warn, named
    else:
        assert res.verdict.status == "pass" and res.unaccounted == ()


def test_reproducible_noise_streams_of_one_training_differ():
    """Bug caught (review): with reproducible_noise, DP-Flat's DP selection run and its main run
    drew the same noise (both seeded from train.seed alone): correlated noise across two releases."""
    draw = lambda g: torch.randn(8, generator=g)  # noqa: E731
    main = draw(noise_generator(reproducible=True, train_seed=3))
    assert torch.equal(main, draw(noise_generator(reproducible=True, train_seed=3, stream=0)))
    assert not torch.equal(main, draw(noise_generator(reproducible=True, train_seed=3, stream=1)))
