#!/usr/bin/env python3
"""A goplugins plugin in Python 3, standard library only, written from
docs/PROTOCOL.md: "wordstats" 1.0.0 counts the words of a text and names
the most frequent one, and the most frequent one that is not a stop word.
It asks the host for the stop words with a host call (protocol version 2,
section 6.2): the host function "stopwords" answers a JSON list of words.
Requests and responses are JSON (the "json" codec):

    request:  {"text": "the cat and the hat"}
    response: {"words": 5, "distinct": 4, "top": "the", "top_content": "cat",
               "engine": "python 3.x"}

With a host that speaks only version 1, or when the host call fails,
"top_content" is left out and "host_error" carries the host's error code.
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
HOST_CALL, HOST_RESULT, HOST_ERROR, METADATA = 0x0E, 0x0F, 0x10, 0x12
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


class Host:
    """Calls host functions (HOST_CALL) and waits for their answers. This
    plugin serves one request at a time, so while it waits it reads the
    frames that arrive and keeps the requests among them for later."""

    def __init__(self, inp, out, protocol):
        self.inp, self.out, self.protocol = inp, out, protocol
        self.next_id = 0
        self.backlog = []  # frames read while waiting, served afterwards

    def call(self, parent, name, request):
        """Returns (response, None) or (None, error code)."""
        if self.protocol < 2:
            return None, "unsupported"
        self.next_id += 1
        hid = self.next_id
        name_bytes = name.encode()
        payload = struct.pack(">QB", parent, len(name_bytes)) + name_bytes + json.dumps(request).encode()
        write_frame(self.out, HOST_CALL, hid, payload)
        while True:
            frame = read_frame(self.inp)
            if frame is None:
                return None, "canceled"
            ftype, fid, body = frame
            if ftype in (HOST_RESULT, HOST_ERROR) and fid == hid:
                if body is None:  # over our limit: skipped by read_frame
                    return None, "frame_too_large"
                if ftype == HOST_RESULT:
                    return json.loads(body), None
                return None, json.loads(body).get("code", "error")
            if ftype == CANCEL and fid == parent:
                return None, "canceled"  # the host gave up on our request
            self.backlog.append(frame)


def handle(payload, host, rid):
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
    stop, code = host.call(rid, "stopwords", {})
    if code is not None:
        resp["host_error"] = code
        return resp, None
    content = sorted((kv for kv in counts.items() if kv[0] not in stop), key=lambda kv: (-kv[1], kv[0]))
    if content:
        resp["top_content"] = content[0][0]
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
    offered = hello.get("protocols", [])
    protocol = 2 if 2 in offered else 1 if 1 in offered else 0
    if protocol == 0:
        write_error(out, 0, "protocol_version", "wordstats speaks protocol versions 1 and 2")
        return 1
    if hello.get("codec") != "json":
        write_error(out, 0, "codec", "wordstats knows the json codec only")
        return 1
    welcome = {"protocol": protocol, "max_frame_size": MAX_FRAME, "name": "wordstats", "version": "1.0.0"}
    write_frame(out, WELCOME, 0, json.dumps(welcome).encode())
    print("wordstats: ready, protocol %d" % protocol, file=sys.stderr, flush=True)

    host = Host(inp, out, protocol)
    while True:
        frame = host.backlog.pop(0) if host.backlog else read_frame(inp)
        if frame is None:
            return 0  # the host went away
        ftype, rid, payload = frame
        if payload is None:
            write_error(out, rid, "frame_too_large", "the request is over %d bytes" % MAX_FRAME)
        elif ftype == CALL:
            resp, err = handle(payload, host, rid)
            if err:
                write_error(out, rid, *err)
            else:
                write_frame(out, RESULT, rid, json.dumps(resp).encode())
        elif ftype == HEALTH:
            write_frame(out, RESULT, rid)
        elif ftype == SHUTDOWN:
            return 0
        elif ftype in (CANCEL, METADATA, HOST_RESULT, HOST_ERROR):
            pass  # nothing to cancel; metadata unused; a late answer to a host call
        else:
            write_error(out, rid, "unsupported", "wordstats does not accept frame type %d" % ftype)


if __name__ == "__main__":
    sys.exit(main())
