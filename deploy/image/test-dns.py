# A one-name DNS server for scripts/build-image.sh (not part of the image): UDP on
# argv[1]:53; answers A 127.0.0.1 for redis-leader.nifi.svc.cluster.local (a Kubernetes
# Service name), NOERROR without answers for its other types, NXDOMAIN for every other name.
# Creates the file argv[2] once it listens.
import socket
import sys

NAMES = {"redis-leader.nifi.svc.cluster.local": bytes([127, 0, 0, 1])}

s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 53))
open(sys.argv[2], "w").close()
while True:
    q, peer = s.recvfrom(512)
    try:
        i, labels = 12, []
        while q[i]:
            labels.append(q[i + 1 : i + 1 + q[i]].decode().lower())
            i += 1 + q[i]
        qtype, end = int.from_bytes(q[i + 1 : i + 3], "big"), i + 5
    except (IndexError, UnicodeDecodeError):
        continue
    ip = NAMES.get(".".join(labels))
    answer = ip is not None and qtype == 1
    flags = bytes([0x81, 0x80 if ip else 0x83])
    counts = bytes([0, 1, 0, int(answer), 0, 0, 0, 0])
    r = q[:2] + flags + counts + q[12:end]
    if answer:
        r += bytes([0xC0, 12, 0, 1, 0, 1, 0, 0, 0, 30, 0, 4]) + ip
    s.sendto(r, peer)
