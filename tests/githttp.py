"""Git over smart HTTP for tests: ``git http-backend`` (CGI) behind a small WSGI server with basic auth.

Run as ``python githttp.py PORT PROJECT_ROOT USER PASSWORD``; serves every repository under
PROJECT_ROOT on 127.0.0.1:PORT. A request without the right ``Authorization: Basic`` answer gets 401,
as github.com does for a bad token. Git's protocol v2 header is passed on, so partial clones
(``--filter=blob:none``) work when the repository allows filters.
"""

from __future__ import annotations

import base64
import subprocess
import sys
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the base class's name)
        pass


class ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


def application(project_root: str, expected: str):
    def serve(environ, start_response):
        if environ.get("HTTP_AUTHORIZATION", "") != expected:
            start_response("401 Unauthorized", [("WWW-Authenticate", 'Basic realm="git"')])
            return [b"bad credentials\n"]
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        cgi_env = {
            "GIT_PROJECT_ROOT": project_root,
            "GIT_HTTP_EXPORT_ALL": "1",
            "REMOTE_USER": "x-access-token",
            "REMOTE_ADDR": "127.0.0.1",
            "PATH": "/usr/bin:/bin",
        }
        for name in ("REQUEST_METHOD", "PATH_INFO", "QUERY_STRING", "CONTENT_TYPE"):
            cgi_env[name] = environ.get(name, "")
        cgi_env["CONTENT_LENGTH"] = str(len(body))
        if environ.get("HTTP_GIT_PROTOCOL"):
            cgi_env["GIT_PROTOCOL"] = environ["HTTP_GIT_PROTOCOL"]
        result = subprocess.run(["git", "http-backend"], input=body, env=cgi_env, capture_output=True, timeout=60)
        head, _, payload = result.stdout.partition(b"\r\n\r\n")
        status, headers = "200 OK", []
        for line in head.decode().split("\r\n"):
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = value.strip()
            elif name:
                headers.append((name, value.strip()))
        start_response(status, headers)
        return [payload]

    return serve


def main() -> None:
    port, project_root, user, password = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    server = make_server(
        "127.0.0.1", port, application(project_root, expected), server_class=ThreadingServer, handler_class=QuietHandler
    )
    server.serve_forever()


if __name__ == "__main__":
    main()
