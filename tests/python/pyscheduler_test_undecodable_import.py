"""A module whose import fails with a message UTF-8 cannot encode."""
import os

raise ImportError("missing " + os.fsdecode(b"\xff\xfe"))
