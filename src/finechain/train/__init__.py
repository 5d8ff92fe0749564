"""Training: one loop (``loop``) for a new task's tail (``fit``) and for joint multi-task training (``joint``)."""
