"""dbfence: a fencing high-availability agent for MySQL/MariaDB."""

__version__ = "0.1.0"
