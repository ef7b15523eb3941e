"""dbfence.mysql: how the agent sees and changes its local MySQL/MariaDB.

This package module imports nothing, so the pure parts stay importable without I/O libraries:

* pure (no I/O): ``gtid`` (positions, states, errant ranges, candidate ranking), ``verdict``
  (probe kinds, reasons, verdicts), ``hysteresis`` (trip/recover state)
* detection: ``monitor.HealthMonitor`` (probes + hysteresis), ``probes.Prober``, ``probes.Target``,
  ``probes.ProbeSettings``, ``probes.Role``
* actions: ``actions.MysqlActions`` (fence, promote, repoint/rejoin, semi-sync, fencing token,
  GTID positions, account check)
* plumbing: ``credentials`` (0600 file or environment), ``connection`` (timeouts, typed errors),
  ``flavour`` (per-flavour SQL), ``errors`` (every typed error)

See docs/detection.md for the probes and their default detection times.
"""
