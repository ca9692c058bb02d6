"""Python text that UTF-8 cannot encode: lone surrogates, as os.fsdecode makes from the
bytes of an undecodable file name. Each function puts such text where pyscheduler turns
Python text into C++ text."""
import os

UNDECODABLE = os.fsdecode(b"caf\xe9.txt")  # 'caf\udce9.txt'


def raise_message(items=None):
    raise ValueError("cannot open " + UNDECODABLE + " (rest intact)")


class BadTypeError(Exception):
    pass


# A type's __name__ must be valid UTF-8; its __module__ may be any str.
BadTypeError.__module__ = "mod" + os.fsdecode(b"\xff")


def raise_type(items=None):
    raise BadTypeError("plain message")


class StrRaises(Exception):
    def __str__(self):
        raise RuntimeError("str() refused")


def raise_str_raises(items=None):
    raise StrRaises()


def exception_per_item(items):
    return [ValueError("item " + UNDECODABLE) for _ in items]


def identity(items):
    return items
