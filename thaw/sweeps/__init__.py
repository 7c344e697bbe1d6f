"""Sweeps, by responsibility: `stats` ranks a sweep's points into cells with intervals and builds the
leaderboard (plain data), `plots` draws its heatmap, `runs` reads and writes the sweep in MLflow (the parent
run, the summary, the champion). Running a sweep (the Hydra entry point and its callback) is
thaw/commands/sweep.py's. None of it is in a stage's cache key (tests/test_stages.py)."""
