"""Worker nodes: run jobs in containers (Docker SDK), stage data, report capacity."""
