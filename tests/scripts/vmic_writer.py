"""Feed a PulseAudio pipe source in real time: silence, then a clip, then silence.

    python vmic_writer.py FIFO CLIP.npy CLIP_AT_S TOTAL_S

Prints ``clip <realtime ns>`` when the clip's first sample goes into the pipe.
"""

import fcntl
import os
import sys
import time

import numpy as np

fifo, clip_path, clip_at, total = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
rate, block = 16000, 160  # 10 ms
clip = np.load(clip_path).astype("<i2")
signal = np.zeros(int(total * rate), "<i2")
at = int(clip_at * rate)
signal[at : at + len(clip)] = clip
fd = os.open(fifo, os.O_WRONLY)
fcntl.fcntl(fd, 1031, 4096)  # F_SETPIPE_SZ: keep the pipe's own latency small
due = time.monotonic()
for i in range(0, len(signal), block):
    time.sleep(max(0.0, due - time.monotonic()))
    if i == at:
        print(f"clip {time.time_ns()}", flush=True)
    os.write(fd, signal[i : i + block].tobytes())  # blocks while nobody records
    # Like a real microphone, never burst to catch up after a stall: keep real time.
    due = max(due + block / rate, time.monotonic())
os.close(fd)
