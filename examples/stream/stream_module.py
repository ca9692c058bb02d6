"""A slow "tokenizer" and an endless sensor for examples/stream."""
import itertools
import time

TEXTS = {
    0: "streams deliver each element to C++ as soon as the generator yields it",
    1: "a reader that stops early closes the generator and its finally block runs",
}


def tokens(batch):
    """Item i: the words of TEXTS[i], one every 2 ms (as if each took work)."""
    def gen(i):
        for word in TEXTS[i].split():
            time.sleep(0.002)
            yield word
    return [gen(i) for i in batch]


closed = []


def readings(batch):
    """Item n: an endless sequence n, n+1, ...; records when it is closed."""
    def gen(n):
        try:
            yield from itertools.count(n)
        finally:
            closed.append(n)
    return [gen(n) for n in batch]


def was_closed(_=None):
    return list(closed)


def shout(batch):
    return [word.upper() for word in batch]
