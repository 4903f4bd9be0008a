"""The core: what a run is and what becomes of it, knowing no IPython, HTTP, Docker or cluster.

``spec`` (frozen, validated description of a run), ``events`` (phases), ``backend`` (the contract
every backend implements), ``runs`` (one run, start to finish, recorded), ``store`` (snapshot
records), ``snapshots`` (rerun, verify, diff, prune), ``verbs`` (list/show/logs/rm as text),
``transfer`` and ``richoutput`` (values and display data across the boundary),
``requirements`` (locks and captured pins), ``formatting`` (durations, sizes, times),
``owner`` (which process a run belongs to).
"""
