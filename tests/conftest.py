"""Test configuration.

- Triton kernels run on the CPU under the interpreter: TRITON_INTERPRET=1 is set before anything
  imports triton (``triton.jit`` reads it when a kernel is defined), on a machine without CUDA
  only: with a GPU the kernels are compiled, which is what the GPU tests must check.
- ``ATTNBENCH_PLUGINS=a.py,b.py`` registers a user's variants before collection, so the tests
  generated from the registry cover them too.
- Tests marked ``gpu`` skip with a reason where no CUDA device is present.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

import attnbench  # noqa: E402

for _path in filter(None, os.environ.get("ATTNBENCH_PLUGINS", "").split(",")):
    attnbench.load_plugin(_path)

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device; none on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def poison_uninitialized():
    """Fill memory from torch.empty with NaN, so unwritten output elements show up as NaN."""
    import torch.utils.deterministic as det

    old_fill = det.fill_uninitialized_memory
    old_det = torch.are_deterministic_algorithms_enabled()
    old_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    det.fill_uninitialized_memory = True
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        det.fill_uninitialized_memory = old_fill
        torch.use_deterministic_algorithms(old_det, warn_only=old_warn)


PLANTED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "plugins", "planted.py")


@pytest.fixture(scope="module")
def planted_variants():
    """The planted variants of ``tests/plugins/planted.py`` for one test module, unregistered
    after it (a module uses it with ``pytestmark = pytest.mark.usefixtures(...)``)."""
    attnbench.load_plugin(PLANTED)
    yield
    for name in attnbench.variant_names():
        if ".planted_" in name:
            attnbench.unregister_variant(name)
    attnbench.registry._PLUGINS.discard(os.path.realpath(PLANTED))
