"""The ``mnn`` command line: train/demo outputs, the error boundary, figures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from host_sdk import cli
from host_sdk.errors import ConfigError, PhysicsError
from host_sdk.physics import paper_network
from host_sdk.plots import plot_curves, plot_network
from host_sdk.training import run_experiment

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    "argv,message",
    [
        (["train", "--task", "xor"], "mnn: train: argument --task: invalid choice: 'xor'"),
        (["train"], "mnn: train: the following arguments are required: --task"),
        (["train", "--task", "iris", "--seeds", "3-1"], "mnn: bad seed range '3-1'"),
        (["train", "--task", "iris", "--seeds", "a"], "mnn: bad seed list 'a'"),
        (["train", "--task", "iris", "--seeds", "0-5000"], "more than 1000 seeds"),
        (["train", "--task", "iris", "--epochs", "-3"], "mnn: train: argument --epochs: expected an integer >= 0, got -3"),
        (["train", "--task", "iris", "--lr", "nan"], "argument --lr: expected a finite number > 0"),
        (["train", "--task", "iris", "--backend", "rig9"], "argument --backend: invalid choice: 'rig9'"),
        (["fly"], "mnn: argument COMMAND: invalid choice: 'fly'"),
        ([], "mnn: a command is required"),
    ],
)
def test_bad_arguments_give_one_line_and_exit_2(capsys, argv, message) -> None:
    code, out, err = _run(capsys, *argv)
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("mnn: ")
    assert message in err


def test_parse_seeds() -> None:
    assert cli.parse_seeds("0-9") == list(range(10))
    assert cli.parse_seeds("3") == [3]
    assert cli.parse_seeds("0,2,5-7,2") == [0, 2, 5, 6, 7]
    with pytest.raises(ConfigError):
        cli.parse_seeds("-1")


def test_library_errors_and_interrupts_cross_the_boundary(capsys, monkeypatch) -> None:
    def floppy(args, task, seed):
        raise PhysicsError("stiffness has shape (3,), expected (28,)\nsecond line")

    monkeypatch.setattr(cli, "make_backend", floppy)
    code, out, err = _run(capsys, "train", "--task", "iris")
    assert (code, out) == (2, "")
    assert err == "mnn: stiffness has shape (3,), expected (28,) second line\n"

    def interrupted(args, task, seed):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "make_backend", interrupted)
    code, out, err = _run(capsys, "train", "--task", "iris")
    assert (code, err) == (130, "mnn: interrupted\n")


def test_unwritable_out_dir_is_one_line(capsys, tmp_path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, out, err = _run(capsys, "train", "--task", "behaviour-ce", "--epochs", "1",
                          "--out", str(blocker / "sub"))
    assert code == 2 and err.startswith("mnn: cannot write results to ") and err.count("\n") == 1


def test_train_json_and_out_dir(capsys, tmp_path) -> None:
    out_dir = tmp_path / "run"
    code, out, err = _run(capsys, "train", "--task", "behaviour-ce", "--seeds", "0,1", "--json",
                          "--out", str(out_dir))
    assert code == 0
    report = json.loads(out)
    assert out.count("\n") == 1
    assert report["task"] == "behaviour-ce" and report["seeds"] == [0, 1]
    for key in ("loss", "train_accuracy", "test_accuracy"):
        assert key in report and key in report["mean"] and key in report["std"]
    assert [e["seed"] for e in report["per_seed"]] == [0, 1]
    u13, u14 = report["per_seed"][0]["outputs_mm"]
    assert u13 == pytest.approx(-0.6253, abs=1e-3) and u14 == pytest.approx(-0.4800, abs=1e-3)
    names = sorted(p.name for p in out_dir.iterdir())
    assert names == ["curves.png", "history.json", "network-seed0.png", "network-seed1.png",
                     "stiffness-seed0.json", "stiffness-seed1.json"]
    stiff = json.loads((out_dir / "stiffness-seed1.json").read_text())
    assert stiff["bonds"][0] == [0, 1] and len(stiff["bonds"]) == len(stiff["k"]) == 28
    assert set(np.round(stiff["k"], 6)) == {103.125, 171.875}
    history = json.loads((out_dir / "history.json").read_text())
    assert history["summary"]["task"] == "behaviour-ce"
    assert history["histories"][0]["stages"][0]["loss"][0] == pytest.approx(np.log(2), rel=1e-3)
    for png in out_dir.glob("*.png"):
        assert png.read_bytes()[:8] == PNG_MAGIC


def test_regression_json_reports_relative_error(capsys) -> None:
    code, out, _ = _run(capsys, "train", "--task", "regression-scaled", "--epochs", "50",
                        "--lr", "2", "--json")
    report = json.loads(out)
    assert code == 0 and report["metric"] == "relative_error"
    assert 0 < report["relative_error"] < 0.05
    assert report["per_seed"][0]["relative_error"] == report["relative_error"]
    assert "test_relative_error" in report["mean"] and "train_relative_error" in report["mean"]


def test_damage_table_output(capsys) -> None:
    code, out, _ = _run(capsys, "train", "--task", "damage", "--epochs", "3", "--seeds", "2")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("damage: damage: train Iris, cut bonds 10-11, 11-14 (paper numbers)")
    assert "test iris acc 0.333->" in lines[2] and " -> iris acc 0." in lines[2]
    assert lines[-2].startswith("mean") and lines[-1].startswith(" std")


def test_demo_writes_figures(capsys, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, _ = _run(capsys, "demo", "--backend", "sim", "--seeds", "0", "--epochs", "2")
    assert code == 0
    assert out.startswith("iris: Iris")
    assert (tmp_path / "mnn-demo" / "network-seed0.png").read_bytes()[:8] == PNG_MAGIC
    assert (tmp_path / "mnn-demo" / "curves.png").exists()


def test_console_entry_point_runs_as_a_module() -> None:
    proc = subprocess.run([sys.executable, "-m", "host_sdk.cli", "train", "--task", "nope"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.startswith("mnn: train: argument --task: invalid choice: 'nope'")
    assert proc.stderr.count("\n") == 1


def test_network_figure_labels_and_colour_bar() -> None:
    setup = paper_network()
    k = np.linspace(setup.k_min, setup.k_max, setup.network.n_bonds)
    fig = plot_network(setup.network, k, k_min=setup.k_min, k_max=setup.k_max,
                       io=setup.io["iris"], paper_numbers=True, removed=[(9, 10)], title="t")
    ax, cbar_ax = fig.axes
    texts = {t.get_text() for t in ax.texts}
    assert {str(n) for n in range(1, 15)} <= texts and "0" not in texts
    assert cbar_ax.get_ylabel() == "bond stiffness k (N/m)"
    assert ax.get_xlabel() == "x (mm)" and ax.get_ylabel() == "y (mm)"
    labels = ax.get_legend_handles_labels()[1]
    assert {"fixed node", "input (force)", "output (displacement)", "cut bond"} <= set(labels)
    with pytest.raises(ConfigError, match=r"\(3,\)"):
        plot_network(setup.network, np.ones(3))


def test_curves_figure_marks_stages() -> None:
    h = run_experiment("iris", 0, epochs=2)
    fig = plot_curves([h, run_experiment("iris", 1, epochs=2)])
    loss_ax, metric_ax = fig.axes
    assert loss_ax.get_yscale() == "log"
    assert metric_ax.get_ylabel() == "accuracy"
    assert len(loss_ax.lines) == 2 + 1 and len(metric_ax.lines) == 2 * 2 + 2
    with pytest.raises(ConfigError):
        plot_curves([])
