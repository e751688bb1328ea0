"""Session-wide test settings: nothing a test or a re-executed notebook writes lands in
the repository's own artifacts/ or results/ folders."""
import os
import tempfile

import matplotlib

matplotlib.use("Agg")


def pytest_configure(config):
    if os.environ.get("TBKD_TEST_KEEP_ENV"):
        return
    base = tempfile.mkdtemp(prefix="tbkd-test-")
    os.environ["TBKD_ARTIFACTS"] = os.path.join(base, "artifacts")
    os.environ["TBKD_RESULTS"] = os.path.join(base, "results")
    # re-executed notebooks (nbval) run without progress bars: long cells that update
    # bars thousands of times made nbval time out waiting for the cell's output
    os.environ.setdefault("TBKD_PROGRESS", "off")


import pytest  # noqa: E402


@pytest.fixture
def one_torch_thread():
    """One intra-op torch thread while a test runs (restored after): on a 2-core machine
    shared with other jobs, small convolutions are faster and steadier on one thread."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
