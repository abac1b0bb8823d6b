"""Small files with the quirks of real data: see :mod:`tests.messy.generate`."""
