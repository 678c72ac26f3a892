import sys

import pytest


@pytest.fixture
def run_cli(monkeypatch, capsys):
    """Run `encseg ARGS...` in-process through the real entry point; returns (exit_code, stdout, stderr)."""
    from encseg.cli import main

    def run(*args: str):
        monkeypatch.setattr(sys, "argv", ["encseg", *map(str, args)])
        code = 0
        try:
            main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run faster on one torch thread than on two on a shared 2-core machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
