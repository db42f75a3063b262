"""Jobs: training runs and studies as processes, the server's on-disk run queue and its slots.

  runs.py       start, cancel, wait for and list `python -m idlora_core.train` processes; run folders
  studies.py    start, stop and list `python -m idlora_core.study` processes
  slots.py      the run limit and who holds its slots
  run_queue.py  the one FIFO every session of a served lab submits to
  class_study.py  one study the room fills in: students' joins, each one run through the queue
  throughput.py time estimates of runs and of the queue's wait, from this server's finished runs
  owners.py     who owns a run folder (owner.json) and who may list it
No Streamlit and no pandas here; the app's pages and the tables in `analysis/` call it.
"""
