"""Recovery after a dropped link: the host reconnects and training resumes where it stopped."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from hil_support import (DroppingTransport, Hil, board_steps, fig1_backend, fig1_io, fig1_steps,
                         fresh_start, needs, normalised_error, sim_fig1)
from host_sdk.errors import TransportError
from host_sdk.transport import open_transport


def test_training_resumes_after_a_dropped_link(calibrated: Hil) -> None:
    hil = calibrated
    needs(hil.rig, fig1_io(), "the Fig. 1 case")
    with hil.session() as session:
        k0 = fresh_start(session)
    victim = hil.rig.board_at(13)
    assert victim is not None
    wrapped: dict[str, DroppingTransport] = {}

    def opener(url: str, _boards: Any) -> DroppingTransport:
        wrapped[url] = DroppingTransport(open_transport(url))
        return wrapped[url]

    with hil.session(transport_factory=opener) as session:
        session.handshake()
        backend = fig1_backend(session)
        base = backend.step_base
        fig1_steps(backend, [0, 1])
        # the output board's cable comes out a few frames into step 2
        wrapped[hil.ports[victim.address]].cut_after = wrapped[hil.ports[victim.address]].writes + 3
        with pytest.raises(TransportError, match="dropped|did not answer|kept"):
            fig1_steps(backend, [2])
    # the host reconnects: every board is where the last commit left it
    with hil.session() as session:
        steps = board_steps(session)
        assert set(steps[b.address] for b in hil.rig.boards if b.bonds) == {base + 1}
        backend = fig1_backend(session)
        assert backend.step_base == base + 2
        fig1_steps(backend, [0, 1])  # steps 2 and 3 of the run
        assert set(board_steps(session)[b.address] for b in hil.rig.boards if b.bonds) == {base + 3}
        k4 = session.read_stiffness()
    assert normalised_error(k4 - k0, sim_fig1(hil.rig, k0, 4) - k0) < 0.1
