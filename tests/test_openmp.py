"""robustmix._openmp: one thread's OpenMP team size, without touching other threads'."""

from __future__ import annotations

import threading

import pytest
import torch

from robustmix import _openmp

needs_runtime = pytest.mark.skipif(
    not _openmp._runtimes(), reason="no OpenMP runtime found in this process (torch built without OpenMP?)"
)


@needs_runtime
def test_one_thread_sets_this_threads_count_only_and_restores_it():
    before = torch.get_num_threads()
    with _openmp.one_thread():
        assert torch.get_num_threads() == 1
        torch.rand(256, 1024).mul_(2).sum()  # a parallel-sized op keeps it at one
        assert torch.get_num_threads() == 1
        other = []
        thread = threading.Thread(target=lambda: other.append(torch.get_num_threads()))
        thread.start()
        thread.join()
        assert other == [before]  # a thread started meanwhile takes the process's count
    assert torch.get_num_threads() == before


@needs_runtime
def test_a_thread_keeps_the_count_it_set_for_itself():
    before = torch.get_num_threads()
    seen = []

    def worker():
        _openmp.set_this_threads_count(1)
        torch.rand(256, 1024).sum()
        seen.append(torch.get_num_threads())

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen == [1] and torch.get_num_threads() == before


def test_runtimes_are_openmp_libraries_and_counts_are_checked():
    for lib in _openmp._runtimes():
        assert lib._name.rsplit("/", 1)[-1].startswith(_openmp._RUNTIMES)
    with pytest.raises(ValueError, match="n must be >= 1"):
        _openmp.set_this_threads_count(0)
