"""pytest-benchmark suite (not part of `make test`):

    pytest benchmarks --benchmark-only --benchmark-autosave       # save this commit's figures
    pytest benchmarks --benchmark-only --benchmark-compare        # compare with the last save

Tests are generated from the registry: every variant that runs here, forward and forward+backward,
at a few sizes.
"""

import torch

torch.set_num_threads(max(1, torch.get_num_threads()))
