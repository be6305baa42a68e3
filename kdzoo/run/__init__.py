"""Running specs: the runner (teachers, grids, resume), the trainer loop, evaluation,
runtime and precision, the data path, and checkpoint and state I/O."""
