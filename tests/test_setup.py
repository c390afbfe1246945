"""The one setup of a run (resnetkit.training.setup): a dry run and a real run ask the speed probe
about the same network and the same length. The probe is injected; nothing is timed."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from resnetkit import probe
from resnetkit.config import RunConfig
from resnetkit.training import budget
from resnetkit.training.plan import dry_run
from resnetkit.training.trainer import Trainer


def test_a_dry_run_and_a_real_run_ask_the_probe_the_same(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[dict[str, Any]] = []

    def choose(*args: Any, **kwargs: Any) -> probe.Choice:
        asked.append({k: kwargs[k] for k in ("network", "run_steps", "threads")})
        return probe.Choice("fp32", False, False, "probe", 1_000.0)
    monkeypatch.setattr(probe, "choose", choose)
    monkeypatch.setattr(probe, "wait_policy_for_run", lambda *a, **k: None)
    monkeypatch.setattr(budget, "process_age", lambda: 0.0)
    # each setting that once made the two differ: a head's drop rate, a frozen backbone,
    # accumulated batches, a step cap, a budget
    cfg = RunConfig(dataset="digits", model="resnet8", subset=200, batch_size=16, accum_steps=2, drop_rate=0.1,
                    freeze="backbone", max_steps=20, time_budget="1h", out=str(tmp_path / "run"))
    plan = dry_run(cfg)
    trainer = Trainer(cfg)
    trainer.setup()
    assert len(asked) == 2 and asked[0] == asked[1]
    assert '"freeze": "backbone"' in asked[0]["network"] and '"drop_rate": 0.1' in asked[0]["network"]
    assert asked[0]["run_steps"] == 20 * 2  # batches: --max-steps updates of 2 each
    assert plan["epochs"] == trainer.cfg.epochs and plan["config"]["max_steps"] == trainer.cfg.max_steps
    assert plan["steps"] == 20
