# Firmware package of the node boards (MicroPython; also imported by the host emulator).
FIRMWARE_VERSION = "0.1.0"
