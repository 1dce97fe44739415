"""The `--timesteps` syntax in words, which the parser's errors and the commands' help both quote: a module of its
own because `scoring.schedule` imports torch and `diffdisc --help` must not (seconds and hundreds of MB)."""

TIMESTEPS_HELP = "N: N evenly spaced timesteps (the official grid); T1,T2,...: exactly those (one timestep: T1,)"
