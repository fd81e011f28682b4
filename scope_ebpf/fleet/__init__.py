"""The host agent: the daemon, its config, systemd notification, privileges
and the status file (`scope-ebpf daemon`)."""
