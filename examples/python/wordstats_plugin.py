#!/usr/bin/env python3
"""A goplugins plugin in Python 3, standard library only, written from
docs/PROTOCOL.md: "wordstats" 1.0.0 counts the words of a text and names
the most frequent one. Requests and responses are JSON (the "json" codec):

    request:  {"text": "the cat and the hat"}
    response: {"words": 5, "distinct": 4, "top": "the", "engine": "python 3.x"}
"""

import collections
import json
import os
import platform
import struct
import sys

COOKIE_KEY = "GOPLUGINS_MAGIC_COOKIE"
COOKIE_VALUE = "d3b07384d113edec49eaa6238ad5ff00-goplugins"
HELLO, WELCOME, CALL, RESULT, ERROR = 0x01, 0x02, 0x03, 0x04, 0x05
CANCEL, HEALTH, SHUTDOWN = 0x06, 0x07, 0x0D
MAX_FRAME = 1 << 20
HEADER = struct.Struct(">IBQ")  # length (type + id + payload), type, request id


def read_exact(f, n):
    buf = b""
    while len(buf) < n:
        chunk = f.read(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def read_frame(f):
    """Returns (type, id, payload), None at the end of the stream, or
    (type, id, None) for a frame over MAX_FRAME, whose payload is skipped
    so that the stream stays usable."""
    header = read_exact(f, HEADER.size)
    if header is None:
        return None
    length, ftype, rid = HEADER.unpack(header)
    if length < 9:
        raise ValueError("bad frame length %d" % length)
    if length > MAX_FRAME:
        left = length - 9
        while left > 0:
            chunk = f.read(min(left, 1 << 16))
            if not chunk:
                return None
            left -= len(chunk)
        return ftype, rid, None
    payload = read_exact(f, length - 9) if length > 9 else b""
    if payload is None:
        return None
    return ftype, rid, payload


def write_frame(f, ftype, rid, payload=b""):
    f.write(HEADER.pack(9 + len(payload), ftype, rid) + payload)
    f.flush()


def write_error(f, rid, code, message, retryable=False):
    body = {"code": code, "message": message, "retryable": retryable}
    write_frame(f, ERROR, rid, json.dumps(body).encode())


def handle(payload):
    """Returns (response, None) or (None, (code, message))."""
    try:
        req = json.loads(payload)
    except ValueError as e:
        return None, ("bad_request", "the request is not JSON: %s" % e)
    text = req.get("text", "")
    if not text.strip():
        return None, ("empty", "nothing to count: send a non-empty text")
    words = [w.strip(".,;:!?\"'").lower() for w in text.split()]
    words = [w for w in words if w]
    counts = collections.Counter(words)
    top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]
    resp = {"words": len(words), "distinct": len(counts), "top": top,
            "engine": "python " + platform.python_version()}
    return resp, None


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
        write_error(out, 0, "protocol_version", "wordstats speaks protocol 1 only")
        return 1
    if hello.get("codec") != "json":
        write_error(out, 0, "codec", "wordstats knows the json codec only")
        return 1
    welcome = {"protocol": 1, "max_frame_size": MAX_FRAME, "name": "wordstats", "version": "1.0.0"}
    write_frame(out, WELCOME, 0, json.dumps(welcome).encode())
    print("wordstats: ready", file=sys.stderr, flush=True)

    while True:
        frame = read_frame(inp)
        if frame is None:
            return 0  # the host went away
        ftype, rid, payload = frame
        if payload is None:
            write_error(out, rid, "frame_too_large", "the request is over %d bytes" % MAX_FRAME)
        elif ftype == CALL:
            resp, err = handle(payload)
            if err:
                write_error(out, rid, *err)
            else:
                write_frame(out, RESULT, rid, json.dumps(resp).encode())
        elif ftype == HEALTH:
            write_frame(out, RESULT, rid)
        elif ftype == SHUTDOWN:
            return 0
        elif ftype == CANCEL:
            pass  # calls are answered at once; nothing to cancel
        else:
            write_error(out, rid, "unsupported", "wordstats does not accept frame type %d" % ftype)


if __name__ == "__main__":
    sys.exit(main())
