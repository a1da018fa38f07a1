"""StopSignal turns SIGTERM/SIGINT into a flag while active and restores the old handlers afterwards."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from sb_train.stop_signal import StopSignal, any_rank_requested


def _send_to_self(sig: signal.Signals) -> None:
    # Linux delivers a signal sent to the own process before kill() returns; Python runs the handler
    # right after, in this (the main) thread.
    os.kill(os.getpid(), sig)


def test_sigterm_sets_the_flag_and_the_process_lives_on():
    before = signal.getsignal(signal.SIGTERM)
    with StopSignal(announce=False) as stop:
        assert not stop.requested and stop.signal_name is None
        _send_to_self(signal.SIGTERM)
        assert stop.requested
        assert stop.signal_name == "SIGTERM"
        _send_to_self(signal.SIGTERM)  # a repeated SIGTERM is absorbed
        assert stop.signal_name == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) is before


def test_second_sigint_forces_a_keyboard_interrupt():
    with StopSignal(announce=False) as stop:
        _send_to_self(signal.SIGINT)
        assert stop.requested and stop.signal_name == "SIGINT"
        with pytest.raises(KeyboardInterrupt):
            _send_to_self(signal.SIGINT)


def test_announcement_goes_to_stderr(capfd):
    with StopSignal() as stop:
        _send_to_self(signal.SIGTERM)
    assert stop.requested
    assert "SIGTERM received" in capfd.readouterr().err


def test_previous_python_handler_is_restored():
    seen = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    try:
        with StopSignal(announce=False):
            _send_to_self(signal.SIGTERM)
        assert seen == []
        _send_to_self(signal.SIGTERM)
        assert seen == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_default_sigterm_kills_again_after_the_block():
    script = textwrap.dedent(
        """
        import os, signal, sys
        from sb_train.stop_signal import StopSignal
        with StopSignal(announce=False) as stop:
            os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested
        print("survived inside", flush=True)
        os.kill(os.getpid(), signal.SIGTERM)
        print("survived outside", flush=True)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert "survived inside" in proc.stdout, proc.stderr
    assert "survived outside" not in proc.stdout
    assert proc.returncode == -signal.SIGTERM


def test_any_rank_requested_without_distributed_returns_the_flag():
    assert any_rank_requested(True) is True
    assert any_rank_requested(False) is False


def test_entering_twice_is_an_error():
    stop = StopSignal(announce=False)
    with stop, pytest.raises(RuntimeError, match="already active"), stop:
        pass
