"""Batches of tensors: stack, split and @stacked, with numpy (and torch when present)."""
import pytest

import pyscheduler

np = pytest.importorskip("numpy")


def test_stack_joins_equal_shapes_and_refuses_others():
    a, b = np.ones((2, 3)), np.zeros((2, 3))
    batch = pyscheduler.stack([a, b])
    assert batch.shape == (2, 2, 3)
    assert pyscheduler.stack([a, np.ones((3, 3))]) is None
    assert pyscheduler.stack([a, a.astype(np.float32)]) is None
    assert pyscheduler.stack([]) is None


def test_split_gives_views_of_the_rows():
    batch = np.arange(6).reshape(3, 2)
    rows = pyscheduler.split(batch)
    assert [r.tolist() for r in rows] == [[0, 1], [2, 3], [4, 5]]
    assert all(np.shares_memory(r, batch) for r in rows)


def test_stacked_calls_once_on_equal_shapes():
    calls = []

    @pyscheduler.stacked
    def total(batch):
        calls.append(batch.shape)
        return batch.sum(axis=(1, 2))

    results = total([np.full((2, 2), i, dtype=np.float64) for i in range(4)])
    assert calls == [(4, 2, 2)]
    assert [float(r) for r in results] == [0.0, 4.0, 8.0, 12.0]


def test_stacked_runs_items_alone_when_shapes_differ():
    calls = []

    @pyscheduler.stacked
    def total(batch):
        calls.append(batch.shape)
        return batch.reshape(batch.shape[0], -1).sum(axis=1)

    results = total([np.ones((2, 2)), np.ones((3,))])
    assert calls == [(1, 2, 2), (1, 3)]
    assert [float(r) for r in results] == [4.0, 3.0]


def test_stacked_isolates_the_failing_item():
    @pyscheduler.stacked
    def checked(batch):
        if (batch < 0).any():
            raise ValueError("negative input")
        return batch * 2

    results = checked([np.array([1.0]), np.array([-1.0]), np.array([3.0])])
    assert float(results[0][0]) == 2.0
    assert isinstance(results[1], ValueError)
    assert float(results[2][0]) == 6.0


def test_other_dlpack_producers_go_through_numpy():
    class Producer:
        def __init__(self, array):
            self._array = array

        def __dlpack__(self, stream=None, **kwargs):
            return self._array.__dlpack__()

        def __dlpack_device__(self):
            return self._array.__dlpack_device__()

    batch = pyscheduler.stack([Producer(np.arange(3.0)), Producer(np.arange(3.0) + 1)])
    assert isinstance(batch, np.ndarray)
    assert batch.tolist() == [[0.0, 1.0, 2.0], [1.0, 2.0, 3.0]]


def test_torch_tensors_are_stacked_by_torch():
    torch = pytest.importorskip("torch")
    batch = pyscheduler.stack([torch.ones(2), torch.zeros(2)])
    assert isinstance(batch, torch.Tensor) and tuple(batch.shape) == (2, 2)
