import sys


def interpreter_identity(items):
    """id(sys) and the interpreter's id: equal for everyone who shares one interpreter."""
    interp_id = sys.implementation.name
    try:
        import _interpreters as interpreters  # CPython 3.13
        interp_id = interpreters.get_current()[0] if isinstance(interpreters.get_current(), tuple) else interpreters.get_current()
    except ImportError:
        try:
            import _xxsubinterpreters as interpreters  # CPython 3.11, 3.12
            interp_id = int(interpreters.get_current())
        except ImportError:
            pass
    return ["%d/%s" % (id(sys), interp_id) for _ in items]
