"""Helpers every test folder shares: local servers, store factories, fakes, keys, certificates."""
