"""Jobs: training runs and studies as processes, the server's on-disk run queue and its slots.

  runs.py       start, cancel, wait for and list `python -m idlora_core.train` processes; run folders
  studies.py    start, stop and list `python -m idlora_core.study` processes
  slots.py      the run limit and who holds its slots
  run_queue.py  the one FIFO every session of a served lab submits to
  class_study.py  one study the room fills in: students' joins, each one run through the queue
No Streamlit and no pandas here; the app's pages and the tables in `analysis/` call it.
"""
