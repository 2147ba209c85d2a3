"""Integrations of the daemon with the system around it, each an ``Observer`` of the loop.

``systemd``  sd_notify: READY=1, STATUS=, RELOADING=1, STOPPING=1, WATCHDOG=1.
``journal``  logging: journald with structured fields under systemd, plain stderr otherwise.
``metrics``  the Prometheus endpoint: a collector over a snapshot the loop publishes.

The engine never imports these (nor systemd-python or prometheus-client): the composition
root, ``tierd.service``, builds them and hands them to ``tierd.engine.daemon.Daemon``.
"""
