# Typed access to a request's args map. Every failure raises a BAD_ARGS CmdError with a
# one-line message naming the argument; handlers validate everything before they change state.
from math import isfinite

from .commands import BAD_ARGS, CmdError
from .compat import f32

REQUIRED = object()


def bad(msg):
    return CmdError(BAD_ARGS, msg)


def check_keys(args, allowed):
    for key in args:
        if type(key) is not str:
            raise bad("arg names must be strings")
        if key not in allowed:
            raise bad("unknown arg '%s'" % key)


def _absent(args, key, default):
    # True when key is missing and has a default; raise if it is missing and required
    if key in args:
        return False
    if default is REQUIRED:
        raise bad("missing arg '%s'" % key)
    return True


def as_int(v, what, lo, hi):
    if type(v) is not int or v < lo or v > hi:
        raise bad("%s must be an integer in [%d, %d]" % (what, lo, hi))
    return v


def as_float(v, what):
    # an int or float that is finite (ints are accepted for convenience)
    t = type(v)
    if t is int:
        if v > 1 << 53 or v < -(1 << 53):
            raise bad("%s is out of range" % what)
        v = float(v)
    elif t is not float:
        raise bad("%s must be a number" % what)
    if not isfinite(v):
        raise bad("%s must be finite" % what)
    return v


def as_f32(v, what):
    # a finite number as a float32 board stores it
    v = f32(as_float(v, what))
    if not isfinite(v):
        raise bad("%s does not fit a float32" % what)
    return v


def get_int(args, key, lo, hi, default=REQUIRED):
    if _absent(args, key, default):
        return default
    return as_int(args[key], key, lo, hi)


def get_float(args, key, lo, hi, default=REQUIRED):
    # finite float in [lo, hi]
    if _absent(args, key, default):
        return default
    v = as_float(args[key], key)
    if v < lo or v > hi:
        raise bad("%s must be in [%s, %s]" % (key, lo, hi))
    return v


def get_bool(args, key, default=REQUIRED):
    if _absent(args, key, default):
        return default
    v = args[key]
    if v is not True and v is not False:
        raise bad("%s must be true or false" % key)
    return v


def get_list(args, key, n):
    # the list under key (n >= 0: exactly n items), or None when the key is absent
    if key not in args:
        return None
    v = args[key]
    if type(v) is not list:
        raise bad("%s must be an array" % key)
    if n >= 0 and len(v) != n:
        raise bad("%s needs %d items, got %d" % (key, n, len(v)))
    return v


def f32_list(args, key, n, lo, hi, nonzero=False):
    # n finite float32 values in [lo, hi] (and != 0 if asked), or None when absent
    v = get_list(args, key, n)
    if v is None:
        return None
    out = []
    for i in range(len(v)):
        what = "%s[%d]" % (key, i)
        x = as_f32(v[i], what)
        if x < lo or x > hi or (nonzero and x == 0.0):
            raise bad("%s = %s is out of range" % (what, x))
        out.append(x)
    return out


def int_list(args, key, n, lo, hi):
    v = get_list(args, key, n)
    if v is None:
        return None
    for i in range(len(v)):
        as_int(v[i], "%s[%d]" % (key, i), lo, hi)
    return v
