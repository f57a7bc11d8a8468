# The one table of protocol numbers and limits. host_sdk.protocol mirrors it and
# tests/test_command_table.py checks that the mirror (and docs/protocol.md) hold.
from .compat import const

PROTO_VERSION = const(1)
BROADCAST = const(255)

# Frame and message bounds (docs/protocol.md, "Limits")
MAX_FRAME = const(1024)  # payload + CRC32, before COBS
MAX_DEPTH = const(6)  # nesting of msgpack containers in one message
MAX_ITEMS = const(255)  # elements of one msgpack array or map
MAX_BONDS = const(16)  # bonds owned by one board
MAX_TABLE = const(8)  # points of one stiffness -> actuator calibration table
MAX_N = const(64)  # readings averaged per channel (keeps 24-bit sums in a small int)
MAX_TIMEOUT_MS = const(60000)
MAX_PERIOD_MS = const(1000)
MAX_ROUNDS = const(4096)  # settle rounds of one SAMPLE, whatever the clock does
MAX_SAMPLE = const(1024)  # sample indices 0..MAX_SAMPLE-1 within one step
MAX_STEP = const(0x7FFFFFFF)
MAX_SEQ = const(0xFFFFFFFF)

# Commands
HELLO = const(1)
CONFIGURE = const(2)
TARE = const(3)
SET_LOAD = const(4)
SAMPLE = const(5)
READ_OUTPUT = const(6)
READ_BONDS = const(7)
UPDATE = const(8)
SET_STIFFNESS = const(9)
STATUS = const(10)
REPL = const(11)
DISCARD = const(12)
REBOOT = const(13)
# calibration (docs/protocol.md, READ_RAW and SET_ACTUATOR)
READ_RAW = const(14)
SET_ACTUATOR = const(15)

# Reply status codes
OK = const(0)
BAD_VERSION = const(1)
UNKNOWN_COMMAND = const(2)
BAD_ARGS = const(3)
BAD_STATE = const(4)
NOT_CAPABLE = const(5)
HW_ERROR = const(6)
INTERNAL = const(7)

# SAMPLE phases
FWD = const(0)
ADJ = const(1)

# UPDATE optimisers
SGD = const(0)
ADAM = const(1)

# Name tables (for messages and for the mirror test)
COMMANDS = (
    ("HELLO", HELLO),
    ("CONFIGURE", CONFIGURE),
    ("TARE", TARE),
    ("SET_LOAD", SET_LOAD),
    ("SAMPLE", SAMPLE),
    ("READ_OUTPUT", READ_OUTPUT),
    ("READ_BONDS", READ_BONDS),
    ("UPDATE", UPDATE),
    ("SET_STIFFNESS", SET_STIFFNESS),
    ("STATUS", STATUS),
    ("REPL", REPL),
    ("DISCARD", DISCARD),
    ("REBOOT", REBOOT),
    ("READ_RAW", READ_RAW),
    ("SET_ACTUATOR", SET_ACTUATOR),
)
STATUSES = (
    ("OK", OK),
    ("BAD_VERSION", BAD_VERSION),
    ("UNKNOWN_COMMAND", UNKNOWN_COMMAND),
    ("BAD_ARGS", BAD_ARGS),
    ("BAD_STATE", BAD_STATE),
    ("NOT_CAPABLE", NOT_CAPABLE),
    ("HW_ERROR", HW_ERROR),
    ("INTERNAL", INTERNAL),
)
PHASES = (("FWD", FWD), ("ADJ", ADJ))
OPTIMIZERS = (("SGD", SGD), ("ADAM", ADAM))


class CmdError(Exception):
    # raised by a command handler: the reply carries status and the one-line message
    def __init__(self, status, msg):
        super().__init__(msg)
        self.status = status
        self.msg = msg
