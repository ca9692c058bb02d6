"""A module whose import fails: loadPythonModule must report the Python error."""
raise RuntimeError("this module refuses to be imported")
