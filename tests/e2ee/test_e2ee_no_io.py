"""The e2ee package is sans-I/O: importing it pulls in no networking or event loop."""

from __future__ import annotations

import subprocess
import sys


def test_importing_e2ee_loads_no_network_or_event_loop_modules() -> None:
    code = (
        "import sys, e2ee, e2ee.sframe, e2ee.media;"
        "print(','.join(m for m in ('socket', 'ssl', 'select', 'selectors', 'asyncio', 'trio',"
        " 'threading') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_public_surface_is_reexported() -> None:
    import e2ee

    for name in e2ee.__all__:
        assert getattr(e2ee, name).__doc__, f"{name} lacks a docstring"
    from e2ee.sframe import SFrameReceiver, SFrameSender, decrypt_frame, encrypt_frame

    assert e2ee.encrypt_frame is encrypt_frame and e2ee.decrypt_frame is decrypt_frame
    assert e2ee.SFrameSender is SFrameSender and e2ee.SFrameReceiver is SFrameReceiver
