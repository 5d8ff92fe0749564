"""Name rules shared by the spec's models."""

TASK_NAME = r"^[A-Za-z0-9][A-Za-z0-9_-]*$"  # a folder name and a module name: no dots, no slashes
