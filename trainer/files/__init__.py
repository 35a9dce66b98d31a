"""Files that survive a kill: atomic writes, advisory file locks, disk-space checks, shrinking a
saved array in place. The caches (crops, features, epoch records, checkpoints) write here."""
