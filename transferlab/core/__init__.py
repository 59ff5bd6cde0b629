"""The bottom layer: what every other layer may use and which uses nothing of transferlab's own.

errors (the one-line user error), paths (cache root, atomic writes), distributed (torchrun ranks),
progress (bars and consoles), registry (find a strategy by name), seeding (every random stream from
(seed, purpose))."""
