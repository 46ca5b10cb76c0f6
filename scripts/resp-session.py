#!/usr/bin/env python3
"""Runs commands on one Redis connection and prints them the way redis-cli's prompt does.

Usage: scripts/resp-session.py NAME PORT 'set foo bar' 'get foo' ...
Used by the demo so that a whole session (AUTH, then commands) shares one connection.
"""
import shlex
import socket
import sys


def read_line(f):
    line = f.readline()
    if not line.endswith(b"\r\n"):
        raise RuntimeError("connection closed")
    return line[:-2]


def read_reply(f):
    line = read_line(f)
    kind, rest = line[:1], line[1:].decode(errors="replace")
    if kind == b"+":
        return ("status", rest)
    if kind == b"-":
        return ("error", rest)
    if kind == b":":
        return ("int", rest)
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return ("nil", None)
        data = f.read(n + 2)[:-2]
        return ("bulk", data.decode(errors="replace"))
    if kind == b"*":
        n = int(rest)
        if n < 0:
            return ("nil", None)
        return ("array", [read_reply(f) for _ in range(n)])
    raise RuntimeError(f"unexpected reply type {kind!r}")


def show(reply, indent=""):
    kind, v = reply
    if kind == "status":
        return v
    if kind == "error":
        return f"(error) {v}"
    if kind == "int":
        return f"(integer) {v}"
    if kind == "nil":
        return "(nil)"
    if kind == "bulk":
        return '"' + v.replace('"', '\\"') + '"'
    if not v:
        return "(empty array)"
    width = len(str(len(v)))
    lines = []
    for i, item in enumerate(v, 1):
        prefix = f"{i:>{width}}) "
        lines.append(indent + prefix + show(item, indent + " " * len(prefix)).lstrip())
    return "\n".join(lines).lstrip()


def main():
    name, port, commands = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    s = socket.create_connection(("127.0.0.1", port))
    f = s.makefile("rb")
    for command in commands:
        args = shlex.split(command)
        out = f"*{len(args)}\r\n".encode()
        for a in args:
            b = a.encode()
            out += f"${len(b)}\r\n".encode() + b + b"\r\n"
        s.sendall(out)
        print(f"{name}:6379> {command}")
        print(show(read_reply(f)))


if __name__ == "__main__":
    main()
