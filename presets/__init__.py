"""Published search protocols as data: one JSON file per preset, loaded by ``--preset NAME``."""
