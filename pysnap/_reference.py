"""Pure-Python twins of snapcore: the test oracle and the benchmark baseline.

Each function here computes exactly what its compiled counterpart computes,
the plain way (os.scandir, struct), so tests can compare the two and
benchmarks can show what the compiled core gains.
"""
