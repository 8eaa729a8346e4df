"""Runtime drivers: the contract (`base`) and one sub-package per runtime."""
