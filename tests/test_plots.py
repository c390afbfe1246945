"""The run's figures: curves.png reads well for one epoch as for many."""
from __future__ import annotations

from pathlib import Path

import pytest

from resnetkit import report


@pytest.mark.parametrize("epochs", [1, 3])
def test_curves_show_whole_epochs_and_every_point_inside_the_frame(epochs: int, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    figures = []
    saved = report._save_png
    monkeypatch.setattr(report, "_save_png", lambda fig, path: (figures.append(fig), saved(fig, path)))
    history = [{"epoch": e, "train_loss": 2.0 / e, "val_loss": 1.5 / e, "train_acc": 0.30 + 0.1 * e,
                "val_acc": 0.9 + 0.03 * e} for e in range(1, epochs + 1)]
    report.plot_curves(history, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 1000
    loss_ax, acc_ax = figures[0].axes
    for ax in (loss_ax, acc_ax):
        assert ax.get_xlim() == (0.5, epochs + 0.5)
        assert [t for t in ax.get_xticks() if 0.5 <= t <= epochs + 0.5] == list(range(1, epochs + 1))
    low, high = acc_ax.get_ylim()
    accs = [h[k] for h in history for k in ("train_acc", "val_acc")]
    assert low < min(accs) and max(accs) < high and high <= 1.01 and low >= 0


@pytest.mark.parametrize("spike, scale", [(1.5e10, "log"), (20.0, "linear")])
def test_the_loss_axis_is_logarithmic_when_the_losses_span_more_than_two_decades(
        spike: float, scale: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    figures = []
    saved = report._save_png
    monkeypatch.setattr(report, "_save_png", lambda fig, path: (figures.append(fig), saved(fig, path)))
    history = [{"epoch": e, "train_loss": 2.0 / e, "val_loss": spike if e == 2 else 1.5 / e,
                "train_acc": 0.5, "val_acc": 0.5} for e in range(1, 5)]
    report.plot_curves(history, tmp_path / "curves.png")
    assert figures[0].axes[0].get_yscale() == scale
