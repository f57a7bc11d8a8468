"""The SDK's exception tree.

Every error the library raises on purpose derives from :class:`SdkError`, so the CLI has one
boundary that turns any of them into a single ``mnn: message`` line. Errors about bad *input
values* also derive from :class:`ValueError`, so callers that validate arguments can catch the
standard type.
"""

from __future__ import annotations


class SdkError(Exception):
    """Base class of every error raised on purpose by ``host_sdk``."""


class PhysicsError(SdkError, ValueError):
    """Invalid network, stiffness, force or shape given to the physics core."""


class FloppyNetworkError(PhysicsError):
    """The stiffness matrix is singular: the network has zero-energy (floppy) modes.

    Attributes:
        nodes: 0-based indices of the nodes that move in the zero modes.
    """

    def __init__(self, message: str, nodes: tuple[int, ...] = ()) -> None:
        super().__init__(message)
        self.nodes = tuple(int(n) for n in nodes)


class ConfigError(SdkError, ValueError):
    """A rig file, calibration file, task option or CLI argument is invalid."""


class TransportError(SdkError):
    """A port could not be opened, read or written, or a board stayed silent."""


class ProtocolError(SdkError):
    """Bytes from a board did not form a valid frame or message (a remote protocol error)."""


class NodeError(SdkError):
    """A board answered a request with an error status.

    Attributes:
        status: the status code of the reply (see ``host_sdk.protocol.Status``).
        address: the replying board's address.
    """

    def __init__(self, message: str, status: int = 0, address: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.address = address
