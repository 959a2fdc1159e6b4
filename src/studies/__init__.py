"""The published record of the five seed studies, and how ours is compared with it: the rows
(`rows`), the tables and verdicts (`tables`) and the figures (`figures`), all built from
results/reproduce.json alone (written by `python -m src.reproduce`)."""
