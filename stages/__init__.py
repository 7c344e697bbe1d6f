"""The DVC stage entry points, one module per stage in dvc.yaml: each parses its arguments, reads its typed
params once, calls `thaw` library functions and writes its outputs atomically. No stage imports another."""
