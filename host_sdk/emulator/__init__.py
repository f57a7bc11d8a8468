"""Emulated rigs: the physical world for boards that do not exist.

Modules (imported on demand, so the world can be used without the firmware or pyserial):

* :mod:`~host_sdk.emulator.models`: sensor and actuator models and their specifications;
* :mod:`~host_sdk.emulator.world`: :class:`World` (physics + models + faults) and per-board probes;
* :mod:`~host_sdk.emulator.hal`: a board's wiring into the world and the CPython HAL;
* :mod:`~host_sdk.emulator.inproc`: in-process boards and the ``emu://`` bus endpoints;
* :mod:`~host_sdk.emulator.mpboards`: MicroPython board processes and the world server;
* :mod:`~host_sdk.emulator.ptys`: pseudo-terminals, serving endpoints on them;
* :mod:`~host_sdk.emulator.rig`: :class:`EmulatedRig`, ``configure_args``, flash contents;
* :mod:`~host_sdk.emulator.cli`: the ``mnn emulate`` command.

See ``docs/emulator.md``.
"""
