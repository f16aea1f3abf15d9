"""Shared pytest set-up: GPU tests skip on CPU machines; tests never reach a hub."""

import os

import pytest
import torch

# No network at test time: any Hugging Face call that tries a hub fails fast.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _single_thread():
    # Tests use tiny models: one intra-op thread is as fast, and on a shared 2-core
    # machine a 2-thread OpenMP team can stall for long stretches waiting for a
    # descheduled thread.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def trained_mini_ctc(tmp_path_factory):
    """A Zipformer-CTC trained on the mini corpus, shared by the adaptation tests."""
    from mini_corpus import train_mini_ctc

    torch.set_num_threads(1)
    return train_mini_ctc(tmp_path_factory.mktemp("mini_ctc"))
