"""Tasks: data, splits, input forces, metrics, experiment wiring."""

from __future__ import annotations

import numpy as np
import pytest

from host_sdk.errors import ConfigError
from host_sdk.losses import MSE, BehaviourCE, SoftmaxCE
from host_sdk.tasks import (
    DAMAGE_CUT_PAPER,
    EXPERIMENT_NAMES,
    TASK_NAMES,
    accuracy,
    bond_indices,
    get_experiment,
    get_task,
    load_iris,
    paper_optimiser,
    relative_error,
)
from host_sdk.training import sim_backend


def test_iris_table() -> None:
    x, labels, names = load_iris()
    assert x.shape == (150, 4)
    assert names == ("setosa", "versicolor", "virginica")
    assert np.bincount(labels).tolist() == [50, 50, 50]
    assert x[0].tolist() == [5.1, 3.5, 1.4, 0.2]
    assert x.max(axis=0).tolist() == [7.9, 4.4, 6.9, 2.5]


def test_iris_features_become_down_forces_of_at_most_5_grams() -> None:
    task = get_task("iris")
    forces = task.input_forces(task.features)
    assert forces.shape == (150, 4)
    assert np.all(forces < 0)
    np.testing.assert_allclose(forces.min(axis=0), -0.049, rtol=1e-15)
    # sample 0: (5.1, 3.5, 1.4, 0.2) cm over the maxima (7.9, 4.4, 6.9, 2.5)
    np.testing.assert_allclose(forces[0], -0.049 * np.array([5.1 / 7.9, 3.5 / 4.4, 1.4 / 6.9, 0.2 / 2.5]))
    # nodes 14, 12, 13, 10 in y; outputs x of 8, 2, 3 (paper numbers)
    assert task.io.inputs == ((13, 1), (11, 1), (12, 1), (9, 1))
    assert task.io.outputs == ((7, 0), (1, 0), (2, 0))
    assert isinstance(task.loss, SoftmaxCE) and 10 <= task.loss.c <= 20


def test_iris_split_is_seeded_stratified_and_disjoint() -> None:
    task = get_task("iris")
    a, b, c = task.split(3), task.split(3), task.split(4)
    assert a.x_train.shape == (105, 4) and a.x_test.shape == (45, 4)
    assert np.bincount(a.y_test).tolist() == [15, 15, 15]
    assert np.array_equal(a.x_test, b.x_test) and np.array_equal(a.y_train, b.y_train)
    assert not np.array_equal(a.x_test, c.x_test)
    rows = {tuple(r) + (int(y),) for r, y in zip(task.features, task.targets)}
    train = {tuple(r) + (int(y),) for r, y in zip(a.x_train, a.y_train)}
    test = {tuple(r) + (int(y),) for r, y in zip(a.x_test, a.y_test)}
    # Iris holds duplicate rows, so compare counts of the split with the table's
    assert len(a.x_train) + len(a.x_test) == 150
    assert train | test == rows


def test_regression_data_and_split() -> None:
    task = get_task("regression")
    x = task.features[:, 0]
    assert x.shape == (100,) and np.all(np.abs(x) <= 0.196)
    np.testing.assert_allclose(task.targets, x[:, None] * np.array([0.0, 0.016, 0.004, 0.016]), rtol=1e-15)
    split = task.split(0)
    assert split.x_train.shape == (70, 1) and split.x_test.shape == (30, 1)
    scaled = get_task("regression-scaled")
    np.testing.assert_allclose(scaled.targets, 0.75 * task.targets, rtol=1e-15)
    assert isinstance(task.loss, MSE) and task.batch_size == 16 and task.epochs == 5000


def test_uniform_paper_network_behaviour_outputs() -> None:
    task = get_task("behaviour-ce")
    backend = sim_backend(task)
    y = backend.evaluate(task.input_forces(task.features))
    np.testing.assert_allclose(y * 1e3, [[-0.5243, -0.5243]], atol=5e-5)
    assert isinstance(task.loss, BehaviourCE)
    split = task.split(9)
    assert split.x_train.shape == split.x_test.shape == (1, 1)


def test_regression_is_out_of_reach_even_with_all_softest_bonds() -> None:
    # PAPER: all-softest bonds give u_y / X of only 0.0143 m/N at nodes 13 and 14 (target 0.016)
    task = get_task("regression")
    backend = sim_backend(task)
    backend.set_stiffness(np.full(task.network.n_bonds, task.k_min))
    y = backend.evaluate(np.array([[1.0]]))
    assert y[0, 1] == pytest.approx(0.0143, abs=5e-5)
    assert y[0, 3] == pytest.approx(0.0143, abs=5e-5)


def test_metrics() -> None:
    y = np.array([[1.0, 2.0], [3.0, 4.0]])
    t = np.array([[1.0, 2.0], [3.0, 0.0]])
    assert relative_error(y, t) == pytest.approx(4.0 / np.sqrt(14.0), rel=1e-15)
    assert relative_error(t, t) == 0.0
    assert accuracy(np.array([[-3.0, 1.0, 2.0], [0.1, -0.2, 0.0]]), np.array([0, 0])) == 0.5
    with pytest.raises(ConfigError, match="all-zero"):
        relative_error(y, np.zeros((2, 2)))
    with pytest.raises(ConfigError, match=r"\(2, 2\).*\(2, 1\)"):
        relative_error(y, np.zeros((2, 1)))
    task = get_task("iris")
    assert task.predict(np.array([[1e-4, -3e-4, 2e-4]])).tolist() == [1]


def test_experiments_wiring() -> None:
    assert set(TASK_NAMES) < set(EXPERIMENT_NAMES)
    assert EXPERIMENT_NAMES == ("behaviour-ce", "behaviour-mse", "regression", "regression-scaled",
                                "iris", "switch", "damage")
    switch = get_experiment("switch")
    assert [s.task.name for s in switch.stages] == ["iris", "regression-scaled", "iris"]
    damage = get_experiment("damage")
    assert [s.task.name for s in damage.stages] == ["iris", "iris"]
    bonds = damage.stages[0].task.network.bonds
    cut = damage.stages[1].remove_bonds
    assert sorted(tuple(int(v) + 1 for v in bonds[b]) for b in cut) == sorted(DAMAGE_CUT_PAPER)
    assert DAMAGE_CUT_PAPER == ((10, 11), (11, 14))
    for name in TASK_NAMES:
        task = get_task(name)
        assert task.optimiser.project == "clip"
        assert get_experiment(name).stages[0].task.name == name


def test_bond_indices_and_unknown_names() -> None:
    net = get_task("iris").network
    assert bond_indices(net, ((1, 0), (12, 13))) == (0, 9)
    with pytest.raises(ConfigError, match="nodes 0 and 13"):
        bond_indices(net, ((0, 13),))
    with pytest.raises(ConfigError, match="unknown task 'xor'"):
        get_task("xor")
    with pytest.raises(ConfigError, match="unknown task 'xor'"):
        get_experiment("xor")
    with pytest.raises(ConfigError, match="no paper optimiser"):
        paper_optimiser("switch")
    with pytest.raises(ConfigError, match=r"\(B, 4\)"):
        get_task("iris").input_forces(np.zeros((3, 2)))


def test_paper_optimisers_are_the_sigmoid_configurations() -> None:
    iris = paper_optimiser("iris")
    assert (iris.project, iris.beta, iris.lr) == ("sigmoid", 5.0, 6e-3)
    beh = paper_optimiser("behaviour-ce")
    assert (beh.project, beh.beta, beh.lr) == ("sigmoid", 10.0, 5e-3)
    reg = paper_optimiser("regression-scaled")
    assert (reg.project, reg.beta, reg.lr) == ("sigmoid", 10.0, 0.1)
