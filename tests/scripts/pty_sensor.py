"""A fake serial IMU on a real pty: CSV lines at RATE Hz, garbage, then a disconnect.

    python pty_sensor.py LINK LINES_PER_SESSION SESSIONS RATE

Each session makes a new pty and points LINK at its slave (as udev re-creates a device
node when a sensor is unplugged and plugged back), writes its lines, and closes the pty.
Line i: ``t_ms,ax,ay,az`` with the sensor's own clock in t_ms, ax = i, ay = -i, az = 1.
"""

import os
import sys
import time
import tty

link, per_session, sessions, rate = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
i = 0
for session in range(sessions):
    master, slave = os.openpty()
    tty.setraw(slave)
    tmp = link + ".new"
    os.symlink(os.ttyname(slave), tmp)
    os.replace(tmp, link)
    print(f"session {session} on {os.ttyname(slave)}", flush=True)
    time.sleep(1.5)  # the source (re)opens the port
    start = time.monotonic()
    for n in range(per_session):
        if n % 50 == 25:
            os.write(master, b"#$%* garbage\n1,2\n")
        os.write(master, f"{5000 + i * 1000 / rate:.3f},{i},{-i},1\n".encode())
        i += 1
        time.sleep(max(0.0, start + (n + 1) / rate - time.monotonic()))
    time.sleep(0.3)
    os.close(master)  # unplugged
    os.close(slave)
    time.sleep(0.5)
print("done", flush=True)
