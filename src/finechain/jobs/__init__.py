"""Jobs behind the command line, each a whole piece of work from files to files: check a spec and its data
(``checking``: no PyTorch until the data has passed), train a chain or add tasks (``training``), evaluate a task on a
labelled file (``evaluation``)."""
