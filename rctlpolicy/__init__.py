"""rctlpolicy: resource policies for FreeBSD jails, correct to the kernel's letter."""

__version__ = "0.1.0"
