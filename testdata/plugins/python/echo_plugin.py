#!/usr/bin/env python3
"""A goplugins plugin in Python 3 (standard library only), written from
docs/PROTOCOL.md: it answers the handshake as "pyecho" 1.0.0 and echoes
every CALL payload back unchanged."""

import json
import os
import struct
import sys

COOKIE_KEY = "GOPLUGINS_MAGIC_COOKIE"
COOKIE_VALUE = "d3b07384d113edec49eaa6238ad5ff00-goplugins"
HELLO, WELCOME, CALL, RESULT, ERROR = 0x01, 0x02, 0x03, 0x04, 0x05
CANCEL, HEALTH, SHUTDOWN = 0x06, 0x07, 0x0D
MAX_FRAME = 1 << 20


def read_exact(f, n):
    buf = b""
    while len(buf) < n:
        chunk = f.read(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def read_frame(f):
    """Returns (type, id, payload), None at the end of the stream; payload is
    None for a frame over MAX_FRAME, whose bytes are skipped (section 3)."""
    head = read_exact(f, 4)
    if head is None:
        return None
    (length,) = struct.unpack(">I", head)
    if length < 9:  # corrupt: stop at once, without waiting for more bytes
        raise ValueError("malformed frame length %d" % length)
    rest = read_exact(f, 9)
    if rest is None:
        return None
    ftype, rid = struct.unpack(">BQ", rest)
    if ftype < HELLO or ftype > SHUTDOWN:
        raise ValueError("unknown frame type %d" % ftype)
    if length > MAX_FRAME:
        left = length - 9
        while left > 0:
            chunk = read_exact(f, min(left, 1 << 16))
            if chunk is None:
                return None
            left -= len(chunk)
        return ftype, rid, None
    payload = read_exact(f, length - 9) if length > 9 else b""
    if payload is None:
        return None
    return ftype, rid, payload


def write_frame(f, ftype, rid, payload=b""):
    f.write(struct.pack(">IBQ", 9 + len(payload), ftype, rid) + payload)
    f.flush()


def main():
    if os.environ.get(COOKIE_KEY) != COOKIE_VALUE:
        sys.stderr.write("this program is a goplugins plugin; start it from a goplugins host\n")
        return 1
    os.set_inheritable(3, False)  # programs we start must not get the pipes
    os.set_inheritable(4, False)
    inp = os.fdopen(3, "rb", buffering=0)
    out = os.fdopen(4, "wb")
    frame = read_frame(inp)
    if frame is None or frame[0] != HELLO:
        return 2
    hello = json.loads(frame[2])
    if 1 not in hello.get("protocols", []):
        err = {"code": "protocol_version", "message": "pyecho speaks protocol 1 only"}
        write_frame(out, ERROR, 0, json.dumps(err).encode())
        return 1
    if hello.get("codec") != "json":
        err = {"code": "codec", "message": "pyecho knows the json codec only"}
        write_frame(out, ERROR, 0, json.dumps(err).encode())
        return 1
    welcome = {"protocol": 1, "max_frame_size": MAX_FRAME, "name": "pyecho", "version": "1.0.0"}
    write_frame(out, WELCOME, 0, json.dumps(welcome).encode())
    print("pyecho: handshake done", file=sys.stderr, flush=True)
    while True:
        frame = read_frame(inp)
        if frame is None:
            return 0  # the host went away
        ftype, rid, payload = frame
        if payload is None:
            err = {"code": "frame_too_large", "message": "pyecho takes frames of at most %d bytes" % MAX_FRAME}
            write_frame(out, ERROR, rid, json.dumps(err).encode())
        elif ftype == CALL:
            write_frame(out, RESULT, rid, payload)
        elif ftype == HEALTH:
            write_frame(out, RESULT, rid)
        elif ftype == SHUTDOWN:
            return 0
        elif ftype == CANCEL:
            pass  # calls are answered at once; nothing to cancel
        else:
            err = {"code": "unsupported", "message": "pyecho does not accept frame type %d" % ftype}
            write_frame(out, ERROR, rid, json.dumps(err).encode())


if __name__ == "__main__":
    sys.exit(main())
